/* The number grammar both compiled modules read (gateway/_speedups.c, zherd/_speedups.c):
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

#endif
