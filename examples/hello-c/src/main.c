/* main.c - the hello program: prints a greeting and exercises the library. */
#include <inttypes.h>
#include <stdio.h>

#include "mathutil.h"
#include "strutil.h"

#define GREETING "Hello, dagfs!"

int main(void)
{
    char word[] = "dagfs";
    char name[] = "hello-c";
    const char *phrase = "a content-addressed cache for pipeline outputs";

    puts(GREETING);
    printf("reverse(\"dagfs\") = \"%s\"\n", str_reverse(word));
    printf("upper(\"hello-c\") = \"%s\"\n", str_upper(name));
    printf("words(\"%s\") = %zu\n", phrase, str_count_words(phrase));
    printf("gcd(84, 36) = %" PRIu64 "\n", math_gcd(84, 36));
    printf("fib(50) = %" PRIu64 "\n", math_fib(50));
    printf("primes below 30:");
    for (uint64_t n = 0; n < 30; n++)
        if (math_is_prime(n))
            printf(" %" PRIu64, n);
    putchar('\n');
    return 0;
}
