/* gateway._speedups: the IAMAT line of gateway/protocol.py, parsed in C.
 *
 * Nearly every line a busy gateway reads is an IAMAT. In Python its parse is a regex
 * match, eight group objects, two floats, a digit string and a NamedTuple (~1.8 us);
 * here it is one pass over the bytes (~0.3 us). Only the well-formed IAMAT is parsed
 * here: for anything else (a WHATSAT, a line to answer with `?`) this says None and
 * `parse_line` goes on in Python, so the two can only differ on what this accepts, and
 * the tests hold that to exactly what Python would give.
 *
 *   parse_iamat(line, max_id, IAmAt) -> IAmAt(client_id, coords, time, time_ns, lat, lon)
 *                                       or None
 *
 * The grammar (protocol.py's _IAMAT, fullmatch): optional whitespace, "IAMAT", then
 * three fields cut by runs of ASCII whitespace: the client id (any bytes but
 * whitespace; at most max_id bytes of UTF-8), the coordinates ([+-] digits ["." digits],
 * twice, |lat| <= 90 and |lon| <= 180 exactly), the time ([+-]? 1-20 digits
 * ["." 1-9 digits]); then optional whitespace.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "grammar.h"

/* float(text) for p[start, end), as Python's float() reads it. */
static double to_double(const unsigned char *p, Py_ssize_t start, Py_ssize_t end) {
    char small[64], *text = small;
    Py_ssize_t len = end - start;
    if (len >= (Py_ssize_t)sizeof small) {
        text = PyMem_Malloc(len + 1);
        if (text == NULL) {
            PyErr_NoMemory();
            return -1.0;
        }
    }
    memcpy(text, p + start, len);
    text[len] = '\0';
    double value = PyOS_string_to_double(text, NULL, NULL);
    if (text != small)
        PyMem_Free(text);
    return value;
}

static PyObject *parse_iamat(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "parse_iamat(line, max_id, IAmAt)");
        return NULL;
    }
    PyObject *line = args[0], *iamat_type = args[2];
    Py_ssize_t max_id = PyLong_AsSsize_t(args[1]);
    if (max_id == -1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_CheckExact(line) || !PyType_Check(iamat_type))
        Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(line);
    Py_ssize_t n = PyBytes_GET_SIZE(line), i = 0;

    /* four fields cut by whitespace: IAMAT, id, coordinates, time */
    Py_ssize_t at[4], end[4];
    for (int f = 0; f < 4; f++) {
        while (i < n && is_space(p[i]))
            i++;
        if (i == n)
            Py_RETURN_NONE;
        at[f] = i;
        while (i < n && !is_space(p[i]))
            i++;
        end[f] = i;
    }
    while (i < n && is_space(p[i]))
        i++;
    if (i != n || end[0] - at[0] != 5 || memcmp(p + at[0], "IAMAT", 5) != 0)
        Py_RETURN_NONE;

    Py_ssize_t id_len = end[1] - at[1];
    if (id_len > max_id || !is_utf8(p + at[1], id_len))
        Py_RETURN_NONE;

    Py_ssize_t c = at[2], lat_end;
    int lat_within, lon_within;
    if (!coordinate(p, end[2], &c, 90, &lat_within))
        Py_RETURN_NONE;
    lat_end = c; /* where the longitude starts */
    if (!coordinate(p, end[2], &c, 180, &lon_within) || c != end[2] || !lat_within ||
        !lon_within)
        Py_RETURN_NONE;
    Time time;
    if (!time_field(p, at[3], end[3], &time))
        Py_RETURN_NONE;

    double lat = to_double(p, at[2], lat_end), lon = to_double(p, lat_end, end[2]);
    if (PyErr_Occurred())
        return NULL;
    /* "N" hands the references over, even on failure */
    PyObject *fields = Py_BuildValue(
        "(NNNNdd)", PyBytes_FromStringAndSize((const char *)p + at[1], id_len),
        PyBytes_FromStringAndSize((const char *)p + at[2], end[2] - at[2]),
        PyBytes_FromStringAndSize((const char *)p + at[3], end[3] - at[3]), time_ns(p, &time),
        lat, lon);
    if (fields == NULL)
        return NULL;
    /* IAmAt(*fields) without its Python-level __new__: tuple.__new__(IAmAt, fields) */
    PyObject *call_args = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (call_args == NULL)
        return NULL;
    PyObject *event = PyTuple_Type.tp_new((PyTypeObject *)iamat_type, call_args, NULL);
    Py_DECREF(call_args);
    return event;
}

static PyMethodDef methods[] = {
    {"parse_iamat", (PyCFunction)(void (*)(void))parse_iamat, METH_FASTCALL,
     "parse_iamat(line, max_id, IAmAt) -> IAmAt | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway._speedups", "gateway/protocol.py's IAMAT parse, compiled.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
