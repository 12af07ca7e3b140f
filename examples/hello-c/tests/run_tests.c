/* run_tests.c - runs every hello-c test group; exits 1 if any check failed. */
#include <stdio.h>

#include "check.h"

int check_passed;
int check_failed;

static void run(const char *name, void (*group)(void))
{
    int failed_before = check_failed;
    group();
    printf("%s %s\n", check_failed == failed_before ? "ok  " : "FAIL", name);
}

int main(void)
{
    run("strutil", test_strutil);
    run("mathutil", test_mathutil);
    /* NB: not the bare "N passed, N failed" form: CI logs are parsed for it. */
    printf("hello-c tests: %d checks passed, %d failed\n", check_passed,
           check_failed);
    return check_failed == 0 ? 0 : 1;
}
