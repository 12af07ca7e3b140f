/* strutil.h - small string helpers for hello-c. */
#ifndef HELLO_STRUTIL_H
#define HELLO_STRUTIL_H

#include <stddef.h>

/* Reverses s in place and returns it. */
char *str_reverse(char *s);

/* Upper-cases the ASCII letters of s in place and returns it. */
char *str_upper(char *s);

/* Counts the words of s: maximal runs of characters that are not spaces. */
size_t str_count_words(const char *s);

/* Returns 1 if s starts with prefix, else 0. */
int str_starts_with(const char *s, const char *prefix);

#endif
