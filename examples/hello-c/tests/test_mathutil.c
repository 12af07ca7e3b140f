/* test_mathutil.c - unit tests for src/mathutil.c. */
#include "check.h"
#include "mathutil.h"

void test_mathutil(void)
{
    CHECK(math_gcd(84, 36) == 12);
    CHECK(math_gcd(17, 5) == 1);
    CHECK(math_gcd(0, 9) == 9);
    CHECK(math_gcd(0, 0) == 0);

    CHECK(math_fib(0) == 0);
    CHECK(math_fib(1) == 1);
    CHECK(math_fib(10) == 55);
    CHECK(math_fib(93) == 12200160415121876738ULL);

    CHECK(!math_is_prime(0));
    CHECK(!math_is_prime(1));
    CHECK(math_is_prime(2));
    CHECK(math_is_prime(97));
    CHECK(!math_is_prime(91));
    CHECK(math_is_prime(4294967291ULL));
}
