/* check.h - a minimal assert-style test harness for hello-c. */
#ifndef HELLO_CHECK_H
#define HELLO_CHECK_H

#include <stdio.h>

extern int check_passed;
extern int check_failed;

/* Records one check; a failure prints where it was and goes on. */
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            check_passed++;                                                  \
        } else {                                                             \
            check_failed++;                                                  \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                    \
    } while (0)

void test_strutil(void);
void test_mathutil(void);

#endif
