/* mathutil.h - small integer maths for hello-c. */
#ifndef HELLO_MATHUTIL_H
#define HELLO_MATHUTIL_H

#include <stdint.h>

/* Greatest common divisor; gcd(0, 0) is 0. */
uint64_t math_gcd(uint64_t a, uint64_t b);

/* The n-th Fibonacci number (fib(0) = 0, fib(1) = 1); exact up to n = 93. */
uint64_t math_fib(unsigned n);

/* Returns 1 if n is prime, else 0. */
int math_is_prime(uint64_t n);

#endif
