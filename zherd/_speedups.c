/* zherd._speedups: the hottest functions of a herd server, compiled.
 *
 * Every server checks every record a neighbor sends it, and stores every update it
 * hears of. In Python the check is a regex match, seven group objects, two floats and
 * a digit string (~1.3 us a record, the largest single cost of a busy herd), and a
 * store ~0.7 us. Here each is one pass over the bytes; the same goes for the disk
 * framing, the record an IAMAT makes, and the places index's scan. The Python modules keep their
 * pure-Python versions (used when this module was not built: no C compiler), and the
 * tests hold both to the same answers on any input.
 *
 *   parse_record(line, origins, latest_ns, max_id)          (zherd/record.py)
 *       -> (client_id, origin, time_ns), or the reason (a str) it is not a record
 *   put(entries, client_id, time_ns, origin, record, via, seq)  (zherd/locations.py)
 *       -> the new entry stored under client_id, or None if what is held is as new
 *   apply(entries, records, origins, latest_ns, max_id, via, head)   (zherd/locations.py)
 *       -> (entries stored, new head, records invalid, the first one's reason): a
 *          neighbor's message, each record dropped if it is what is held (a copy by
 *          another path), else passed through parse_record and put
 *   frame_entries(entries, seed, kind) -> the disk frames of entries, joined
 *                                         (zherd/disk.py: length, CRC-32, kind, entry)
 *   make_record(origin, skew_ns, client_id, coords, time) -> the record an IAMAT makes
 *                                         (zherd/record.py: make and format_skew)
 *   near_places(close, phi, lam, cos_phi, ids, i, j, phi0, lam0, cos0, h_max, radius_km)
 *       appends (km, geonameid, row) to `close` for each row in [i, j) within radius_km
 *       of the point (zherd/places/geoindex.py: GeoIndex.within's inner loop, the same
 *       expressions in the same order, so the same floats)
 *
 * The grammar (record.py's _LINE, fullmatch):
 *   origin SP skew SP client SP lat lon SP time
 *   origin, client: one or more bytes that are not ASCII whitespace
 *   skew: [+-] digits "." 9 digits;  lat, lon: [+-] digits ["." digits]
 *   time: [+-]? 1-20 digits ["." 1-9 digits]
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "grammar.h"

static PyObject *NOT_BYTES, *NOT_A_RECORD, *BAD_ORIGIN, *ID_TOO_LONG, *NOT_UTF8, *OUT_OF_RANGE,
    *IN_FUTURE;

/* A run of non-whitespace at p[*i], then one space; its end (exclusive), or -1. */
static Py_ssize_t token(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i) {
    Py_ssize_t start = *i;
    while (*i < n && !is_space(p[*i]))
        (*i)++;
    if (*i == start || *i >= n || p[*i] != ' ')
        return -1;
    return (*i)++;
}

/* Digits at p[*i]: how many (at least one wanted by every caller). */
static Py_ssize_t digits(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i) {
    Py_ssize_t start = *i;
    while (*i < n && is_digit(p[*i]))
        (*i)++;
    return *i - start;
}

static PyObject *reason(PyObject *why) {
    Py_INCREF(why);
    return why;
}

static PyObject *parse_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "parse_record(line, origins, latest_ns, max_id)");
        return NULL;
    }
    PyObject *line = args[0], *origins = args[1], *latest_ns = args[2];
    Py_ssize_t max_id = PyLong_AsSsize_t(args[3]);
    if (max_id == -1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_CheckExact(line))
        return reason(NOT_BYTES);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(line);
    Py_ssize_t n = PyBytes_GET_SIZE(line), i = 0;

    Py_ssize_t origin_end = token(p, n, &i);
    if (origin_end < 0)
        return reason(NOT_A_RECORD);
    /* skew: [+-] digits "." exactly 9 digits, then a space */
    if (i >= n || (p[i] != '+' && p[i] != '-'))
        return reason(NOT_A_RECORD);
    i++;
    if (digits(p, n, &i) == 0 || i >= n || p[i] != '.')
        return reason(NOT_A_RECORD);
    i++;
    if (digits(p, n, &i) != 9 || i >= n || p[i] != ' ')
        return reason(NOT_A_RECORD);
    i++;
    Py_ssize_t client_at = i, client_end = token(p, n, &i);
    if (client_end < 0)
        return reason(NOT_A_RECORD);
    int lat_within, lon_within;
    if (!coordinate(p, n, &i, 90, &lat_within) || !coordinate(p, n, &i, 180, &lon_within))
        return reason(NOT_A_RECORD);
    if (i >= n || p[i] != ' ')
        return reason(NOT_A_RECORD);
    i++;
    Time time;
    if (!time_field(p, i, n, &time))
        return reason(NOT_A_RECORD);

    PyObject *origin = PyBytes_FromStringAndSize((const char *)p, origin_end);
    if (origin == NULL)
        return NULL;
    int known = PySet_Contains(origins, origin);
    if (known <= 0) {
        Py_DECREF(origin);
        return known < 0 ? NULL : reason(BAD_ORIGIN);
    }
    Py_ssize_t client_len = client_end - client_at;
    PyObject *why = client_len > max_id                  ? ID_TOO_LONG
                    : !is_utf8(p + client_at, client_len) ? NOT_UTF8 /* no IAMAT carries it */
                    : !(lat_within && lon_within)         ? OUT_OF_RANGE
                                                          : NULL;
    if (why != NULL) {
        Py_DECREF(origin);
        return reason(why);
    }
    PyObject *ns = time_ns(p, &time);
    if (ns == NULL) {
        Py_DECREF(origin);
        return NULL;
    }
    int future = PyObject_RichCompareBool(ns, latest_ns, Py_GT);
    if (future != 0) {
        Py_DECREF(origin);
        Py_DECREF(ns);
        return future < 0 ? NULL : reason(IN_FUTURE);
    }
    /* (client id, origin, time_ns); "N" hands the references over, even on failure */
    return Py_BuildValue("(NNN)",
                         PyBytes_FromStringAndSize((const char *)p + client_at, client_len),
                         origin, ns);
}

/* An entry: HEADER "<QqB" (seq, client time in ns clamped to int64, via), then the record. */
#define HEADER_SIZE 17

static void put_le(unsigned char *at, unsigned long long value, int bytes) {
    for (int k = 0; k < bytes; k++)
        at[k] = (unsigned char)(value >> (8 * k));
}

static long long get_le_signed(const unsigned char *at) {
    unsigned long long value = 0;
    for (int k = 7; k >= 0; k--)
        value = (value << 8) | at[k];
    return (long long)value;
}

static PyObject *put(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 && nargs != 8) { /* 8: `apply` says what is held (None: nothing) */
        PyErr_SetString(PyExc_TypeError,
                        "put(entries, client_id, time_ns, origin, record, via, seq)");
        return NULL;
    }
    PyObject *entries = args[0], *client_id = args[1], *origin = args[3], *record = args[4];
    if (!PyDict_CheckExact(entries) || !PyBytes_CheckExact(origin) || !PyBytes_CheckExact(record)) {
        PyErr_SetString(PyExc_TypeError, "put: a dict, and bytes for origin and record");
        return NULL;
    }
    int overflow;
    long long time_ns = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (time_ns == -1 && PyErr_Occurred())
        return NULL;
    long via = PyLong_AsLong(args[5]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (via < 0 || via > 255) {
        PyErr_SetString(PyExc_ValueError, "put: via is a byte");
        return NULL;
    }
    PyObject *old; /* borrowed */
    if (nargs == 8) {
        old = args[7] == Py_None ? NULL : args[7];
    } else if ((old = PyDict_GetItemWithError(entries, client_id)) == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (old != NULL) {
        if (!PyBytes_CheckExact(old) || PyBytes_GET_SIZE(old) < HEADER_SIZE) {
            PyErr_SetString(PyExc_ValueError, "put: a held entry is not an entry");
            return NULL;
        }
        const unsigned char *held = (const unsigned char *)PyBytes_AS_STRING(old);
        long long held_ns = get_le_signed(held + 8);
        /* newest wins: client time (a time beyond int64 orders past every held one),
         * then origin name */
        int older = overflow < 0 || (overflow == 0 && time_ns < held_ns);
        if (!older && overflow == 0 && time_ns == held_ns) {
            const char *held_record = (const char *)held + HEADER_SIZE;
            Py_ssize_t held_len = PyBytes_GET_SIZE(old) - HEADER_SIZE;
            const char *space = memchr(held_record, ' ', held_len);
            Py_ssize_t held_origin = space ? space - held_record : held_len;
            Py_ssize_t len = PyBytes_GET_SIZE(origin);
            int cmp = memcmp(PyBytes_AS_STRING(origin), held_record,
                             len < held_origin ? len : held_origin);
            older = cmp < 0 || (cmp == 0 && len <= held_origin);
        }
        if (older)
            Py_RETURN_NONE;
        if (PyDict_DelItem(entries, client_id) < 0) /* to the end: dict order is seq order */
            return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(record);
    PyObject *entry = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + size);
    if (entry == NULL)
        return NULL;
    unsigned char *at = (unsigned char *)PyBytes_AS_STRING(entry);
    long long clamped = overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : time_ns;
    put_le(at, seq, 8);
    put_le(at + 8, (unsigned long long)clamped, 8);
    at[16] = (unsigned char)via;
    memcpy(at + HEADER_SIZE, PyBytes_AS_STRING(record), size);
    if (PyDict_SetItem(entries, client_id, entry) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    return entry;
}

/* A record's client id: its third field, as record.client_of cuts it (a new reference);
 * NULL, with no error set, when it is no bytes or has no third field. */
static PyObject *client_of(PyObject *record) {
    if (!PyBytes_Check(record))
        return NULL;
    const char *p = PyBytes_AS_STRING(record);
    Py_ssize_t n = PyBytes_GET_SIZE(record);
    const char *first = memchr(p, ' ', n);
    const char *second = first ? memchr(first + 1, ' ', n - (first + 1 - p)) : NULL;
    if (second == NULL)
        return NULL;
    const char *start = second + 1;
    const char *third = memchr(start, ' ', n - (start - p));
    return PyBytes_FromStringAndSize(start, (third ? third : p + n) - start);
}

/* Whether `entry` (borrowed, maybe NULL) is what the store holds for exactly `record`. */
static int is_entry_of(PyObject *entry, PyObject *record) {
    if (entry == NULL || !PyBytes_Check(entry) || !PyBytes_Check(record))
        return 0;
    Py_ssize_t n = PyBytes_GET_SIZE(record);
    return PyBytes_GET_SIZE(entry) == HEADER_SIZE + n &&
           memcmp(PyBytes_AS_STRING(entry) + HEADER_SIZE, PyBytes_AS_STRING(record), n) == 0;
}

static PyObject *apply(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyDict_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "apply(entries, records, origins, latest_ns, max_id, via, head)");
        return NULL;
    }
    PyObject *entries = args[0], *records = args[1], *via = args[5];
    long long head = PyLong_AsLongLong(args[6]);
    if (head == -1 && PyErr_Occurred())
        return NULL;
    PyObject *stored = PyList_New(0), *reason = NULL;
    if (stored == NULL)
        return NULL;
    long invalid = 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(records); k++) {
        PyObject *line = PyTuple_GET_ITEM(records, k);
        PyObject *client_id = client_of(line), *old = NULL; /* one lookup: holds, then put */
        if (client_id != NULL) {
            old = PyDict_GetItemWithError(entries, client_id); /* borrowed: the dict keeps it */
            Py_DECREF(client_id);
        }
        if (PyErr_Occurred())
            goto error;
        if (is_entry_of(old, line))
            continue; /* a copy by another path */
        PyObject *parse_args[4] = {line, args[2], args[3], args[4]};
        PyObject *fields = parse_record(module, parse_args, 4);
        if (fields == NULL)
            goto error;
        if (PyUnicode_Check(fields)) {
            invalid++;
            if (reason == NULL)
                reason = fields;
            else
                Py_DECREF(fields);
            continue;
        }
        PyObject *seq = PyLong_FromLongLong(head + 1);
        if (seq == NULL) {
            Py_DECREF(fields);
            goto error;
        }
        /* a valid record's client id is its third field: `old` is what is held for it */
        PyObject *put_args[8] = {entries, PyTuple_GET_ITEM(fields, 0), PyTuple_GET_ITEM(fields, 2),
                                 PyTuple_GET_ITEM(fields, 1), line, via, seq, old ? old : Py_None};
        PyObject *entry = put(module, put_args, 8);
        Py_DECREF(seq);
        Py_DECREF(fields);
        if (entry == NULL)
            goto error;
        if (entry != Py_None) {
            head++;
            if (PyList_Append(stored, entry) < 0) {
                Py_DECREF(entry);
                goto error;
            }
        }
        Py_DECREF(entry);
    }
    if (reason == NULL && (reason = PyUnicode_FromString("")) == NULL)
        goto error;
    return Py_BuildValue("(NLlN)", stored, head, invalid, reason);
error:
    Py_DECREF(stored);
    Py_XDECREF(reason);
    return NULL;
}

/* CRC-32 as zlib computes it (reflected, polynomial 0xEDB88320), continuing from `crc`. */
static unsigned int crc_table[256];

static void make_crc_table(void) {
    for (unsigned int k = 0; k < 256; k++) {
        unsigned int c = k;
        for (int bit = 0; bit < 8; bit++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[k] = c;
    }
}

static unsigned int crc32_update(unsigned int crc, const unsigned char *p, Py_ssize_t n) {
    unsigned int c = crc ^ 0xFFFFFFFFu;
    for (Py_ssize_t k = 0; k < n; k++)
        c = crc_table[(c ^ p[k]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

#define FRAME_HEADER 9 /* disk.FRAME "<IIB": payload length, CRC-32 (seeded by kind), kind */

static PyObject *frame_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "frame_entries(entries, seed, kind)");
        return NULL;
    }
    PyObject *entries = args[0];
    unsigned long seed = PyLong_AsUnsignedLong(args[1]);
    long kind = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(entries), size = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *entry = PyList_GET_ITEM(entries, k);
        if (!PyBytes_Check(entry) || PyBytes_GET_SIZE(entry) > 0xFFFFFFFFLL) {
            PyErr_SetString(PyExc_TypeError, "frame_entries: entries are bytes");
            return NULL;
        }
        size += FRAME_HEADER + PyBytes_GET_SIZE(entry);
    }
    PyObject *frames = PyBytes_FromStringAndSize(NULL, size);
    if (frames == NULL)
        return NULL;
    unsigned char *at = (unsigned char *)PyBytes_AS_STRING(frames);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *entry = PyList_GET_ITEM(entries, k);
        const unsigned char *payload = (const unsigned char *)PyBytes_AS_STRING(entry);
        Py_ssize_t len = PyBytes_GET_SIZE(entry);
        put_le(at, (unsigned long long)len, 4);
        put_le(at + 4, crc32_update((unsigned int)seed, payload, len), 4);
        at[8] = (unsigned char)kind;
        memcpy(at + FRAME_HEADER, payload, len);
        at += FRAME_HEADER + len;
    }
    return frames;
}

static PyObject *make_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "make_record(origin, skew_ns, client_id, coords, time)");
        return NULL;
    }
    PyObject *origin = args[0], *client_id = args[2], *coords = args[3], *time = args[4];
    if (!PyBytes_Check(origin) || !PyBytes_Check(client_id) || !PyBytes_Check(coords) ||
        !PyBytes_Check(time)) {
        PyErr_SetString(PyExc_TypeError, "make_record: bytes fields");
        return NULL;
    }
    /* the skew: signed seconds with exactly 9 decimals; |skew| in decimal digits */
    int overflow;
    long long ns = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    char digits[64];
    int negative;
    Py_ssize_t ndigits;
    if (overflow == 0 && ns != LLONG_MIN) {
        negative = ns < 0;
        unsigned long long magnitude = (unsigned long long)(negative ? -ns : ns);
        ndigits = snprintf(digits, sizeof digits, "%llu", magnitude);
    } else { /* beyond int64 (a client time far from now): Python's digits */
        PyObject *magnitude = PyNumber_Absolute(args[1]);
        PyObject *text = magnitude ? PyObject_Str(magnitude) : NULL;
        Py_XDECREF(magnitude);
        if (text == NULL)
            return NULL;
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
        if (utf8 == NULL || len >= (Py_ssize_t)sizeof digits) {
            Py_DECREF(text);
            PyErr_SetString(PyExc_OverflowError, "make_record: skew too large");
            return NULL;
        }
        memcpy(digits, utf8, len);
        ndigits = len;
        Py_DECREF(text);
        PyObject *zero = PyLong_FromLong(0);
        negative = zero ? PyObject_RichCompareBool(args[1], zero, Py_LT) : -1;
        Py_XDECREF(zero);
        if (negative < 0)
            return NULL;
    }
    Py_ssize_t width = ndigits > 10 ? ndigits : 10; /* zero-padded, as "%010d" */
    Py_ssize_t skew_len = 1 + width + 1;             /* sign, digits, point */
    Py_ssize_t lo = PyBytes_GET_SIZE(origin), lc = PyBytes_GET_SIZE(client_id),
               lx = PyBytes_GET_SIZE(coords), lt = PyBytes_GET_SIZE(time);
    PyObject *record = PyBytes_FromStringAndSize(NULL, lo + 1 + skew_len + 1 + lc + 1 + lx + 1 + lt);
    if (record == NULL)
        return NULL;
    char *at = PyBytes_AS_STRING(record);
    memcpy(at, PyBytes_AS_STRING(origin), lo);
    at += lo;
    *at++ = ' ';
    *at++ = negative ? '-' : '+';
    /* the digits, zero-padded on the left to at least 10 (so "0.000012000") */
    char padded[80];
    memset(padded, '0', width - ndigits);
    memcpy(padded + width - ndigits, digits, ndigits);
    memcpy(at, padded, width - 9);
    at += width - 9;
    *at++ = '.';
    memcpy(at, padded + width - 9, 9);
    at += 9;
    *at++ = ' ';
    memcpy(at, PyBytes_AS_STRING(client_id), lc);
    at += lc;
    *at++ = ' ';
    memcpy(at, PyBytes_AS_STRING(coords), lx);
    at += lx;
    *at++ = ' ';
    memcpy(at, PyBytes_AS_STRING(time), lt);
    return record;
}

#include <math.h>

/* Python's `x ** 2` is libm's pow(x, 2.0), which differs from x * x in the last bit now
 * and then; a compiler turns pow(x, 2.0) into x * x, so it is called through a pointer
 * it cannot see through, for the same bits as Python. */
static double (*volatile libm_pow)(double, double) = pow;

#define EARTH_RADIUS_KM 6371.0088 /* geoindex.EARTH_RADIUS_KM */

static PyObject *near_places(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "near_places(close, phi, lam, cos_phi, ids, i, j, "
                                         "phi0, lam0, cos0, h_max, radius_km)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[5]), j = PyLong_AsSsize_t(args[6]);
    double phi0 = PyFloat_AsDouble(args[7]), lam0 = PyFloat_AsDouble(args[8]);
    double cos0 = PyFloat_AsDouble(args[9]), h_max = PyFloat_AsDouble(args[10]);
    double radius_km = PyFloat_AsDouble(args[11]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer views[4]; /* phi, lam, cos_phi (float64), ids (uint32) */
    int got = 0;
    for (; got < 4; got++)
        if (PyObject_GetBuffer(args[1 + got], &views[got], PyBUF_SIMPLE) < 0)
            goto done;
    for (int k = 0; k < 4; k++) {
        Py_ssize_t item = k < 3 ? (Py_ssize_t)sizeof(double) : 4;
        if (i < 0 || j < i || views[k].len < j * item) {
            PyErr_SetString(PyExc_IndexError, "near_places: rows out of range");
            goto done;
        }
    }
    const double *ps = views[0].buf, *ls = views[1].buf, *cs = views[2].buf;
    const uint32_t *ids = views[3].buf;
    for (Py_ssize_t row = i; row < j; row++) {
        double h = libm_pow(sin((ps[row] - phi0) * 0.5), 2.0) +
                   cos0 * cs[row] * libm_pow(sin((ls[row] - lam0) * 0.5), 2.0);
        if (h > h_max)
            continue;
        double km = 2.0 * EARTH_RADIUS_KM * asin(sqrt(h < 1.0 ? h : 1.0)); /* h_to_km */
        if (km > radius_km)
            continue;
        PyObject *hit = Py_BuildValue("(dkn)", km, (unsigned long)ids[row], row);
        if (hit == NULL || PyList_Append(args[0], hit) < 0) {
            Py_XDECREF(hit);
            goto done;
        }
        Py_DECREF(hit);
    }
done:
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_record", (PyCFunction)(void (*)(void))parse_record, METH_FASTCALL,
     "parse_record(line, origins, latest_ns, max_id) -> (client_id, origin, time_ns) | reason"},
    {"put", (PyCFunction)(void (*)(void))put, METH_FASTCALL,
     "put(entries, client_id, time_ns, origin, record, via, seq) -> entry | None"},
    {"apply", (PyCFunction)(void (*)(void))apply, METH_FASTCALL,
     "apply(entries, records, origins, latest_ns, max_id, via, head) -> "
     "(stored, head, invalid, reason)"},
    {"near_places", (PyCFunction)(void (*)(void))near_places, METH_FASTCALL,
     "near_places(close, phi, lam, cos_phi, ids, i, j, phi0, lam0, cos0, h_max, radius_km)"},
    {"make_record", (PyCFunction)(void (*)(void))make_record, METH_FASTCALL,
     "make_record(origin, skew_ns, client_id, coords, time) -> record"},
    {"frame_entries", (PyCFunction)(void (*)(void))frame_entries, METH_FASTCALL,
     "frame_entries(entries, seed, kind) -> the entries' disk frames, joined"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zherd._speedups", "A herd server's hottest functions, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    make_crc_table();
    struct {
        PyObject **slot;
        const char *text;
    } reasons[] = {
        {&NOT_BYTES, "not a byte string"},
        {&NOT_A_RECORD, "not a record"},
        {&BAD_ORIGIN, "origin is no server of the topology"},
        {&ID_TOO_LONG, "client id too long"},
        {&NOT_UTF8, "client id is not UTF-8"},
        {&OUT_OF_RANGE, "coordinates out of range"},
        {&IN_FUTURE, "time too far in the future"},
    };
    for (size_t k = 0; k < sizeof reasons / sizeof reasons[0]; k++) {
        *reasons[k].slot = PyUnicode_InternFromString(reasons[k].text);
        if (*reasons[k].slot == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
