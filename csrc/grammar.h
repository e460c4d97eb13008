/* The grammar both compiled modules read (gateway/_speedups.c, zherd/_speedups.c):
 * the client line and the herd record share it, as gateway/protocol.py and zherd/record.py
 * each spell it in Python. A header, so that neither package needs the other at run time.
 */
#ifndef ZHERD_GRAMMAR_H
#define ZHERD_GRAMMAR_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* what \s is in a bytes pattern, and what bytes.split() cuts on */
static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* [+-] digits ["." digits] at the start of p[*i, end): whether it is one, and whether
 * |value| <= limit, decided exactly on the digits. */
static inline int coordinate(const unsigned char *p, Py_ssize_t end, Py_ssize_t *i, int limit,
                             int *within) {
    if (*i >= end || (p[*i] != '+' && p[*i] != '-'))
        return 0;
    (*i)++;
    Py_ssize_t whole_at = *i;
    while (*i < end && is_digit(p[*i]))
        (*i)++;
    Py_ssize_t whole = *i - whole_at;
    if (whole == 0)
        return 0;
    int fraction_zero = 1;
    if (*i + 1 < end && p[*i] == '.' && is_digit(p[*i + 1])) {
        (*i)++;
        while (*i < end && is_digit(p[*i])) {
            if (p[*i] != '0')
                fraction_zero = 0;
            (*i)++;
        }
    }
    while (whole > 1 && p[whole_at] == '0') {
        whole_at++;
        whole--;
    }
    if (whole > 3) {
        *within = 0;
        return 1;
    }
    int value = 0;
    for (Py_ssize_t k = 0; k < whole; k++)
        value = value * 10 + (p[whole_at + k] - '0');
    *within = value < limit || (value == limit && fraction_zero);
    return 1;
}

/* A time: where its digits are in the bytes. */
typedef struct {
    int negative;
    Py_ssize_t whole_at, whole; /* the whole seconds' digits */
    Py_ssize_t frac_at, frac;   /* the fraction's (none: frac == 0) */
} Time;

/* Whether p[i, end) is exactly a time: [+-]? 1-20 digits ["." 1-9 digits]. */
static inline int time_field(const unsigned char *p, Py_ssize_t i, Py_ssize_t end, Time *t) {
    t->negative = 0;
    if (i < end && (p[i] == '+' || p[i] == '-'))
        t->negative = p[i++] == '-';
    t->whole_at = i;
    while (i < end && is_digit(p[i]))
        i++;
    t->whole = i - t->whole_at;
    t->frac_at = t->frac = 0;
    if (t->whole == 0 || t->whole > 20)
        return 0;
    if (i < end && p[i] == '.') {
        t->frac_at = ++i;
        while (i < end && is_digit(p[i]))
            i++;
        t->frac = i - t->frac_at;
        if (t->frac == 0 || t->frac > 9)
            return 0;
    }
    return i == end;
}

/* A time's nanoseconds: the whole seconds' digits, then the fraction's padded to 9, as a
 * Python int (it may pass int64). A new reference, or NULL with Python's error set. */
static inline PyObject *time_ns(const unsigned char *p, const Time *t) {
    char digits[32];
    memcpy(digits, p + t->whole_at, t->whole);
    memcpy(digits + t->whole, p + t->frac_at, t->frac);
    memset(digits + t->whole + t->frac, '0', 9 - t->frac);
    digits[t->whole + 9] = '\0';
    PyObject *ns = PyLong_FromString(digits, NULL, 10);
    if (ns == NULL || !t->negative)
        return ns;
    PyObject *negated = PyNumber_Negative(ns);
    Py_DECREF(ns);
    return negated;
}

/* Whether p[0, len) is UTF-8, as every IAMAT's client id is (ASCII is decided at once). */
static inline int is_utf8(const unsigned char *p, Py_ssize_t len) {
    for (Py_ssize_t k = 0; k < len; k++) {
        if (p[k] >= 0x80) {
            PyObject *text = PyUnicode_DecodeUTF8((const char *)p, len, NULL);
            if (text == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(text);
            return 1;
        }
    }
    return 1;
}

#endif
