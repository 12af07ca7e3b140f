/* test_strutil.c - unit tests for src/strutil.c. */
#include <string.h>

#include "check.h"
#include "strutil.h"

void test_strutil(void)
{
    char odd[] = "dagfs";
    char even[] = "abcd";
    char empty[] = "";
    char mixed[] = "Hello-C 42";

    CHECK(strcmp(str_reverse(odd), "sfgad") == 0);
    CHECK(strcmp(str_reverse(even), "dcba") == 0);
    CHECK(strcmp(str_reverse(empty), "") == 0);
    CHECK(strcmp(str_upper(mixed), "HELLO-C 42") == 0);

    CHECK(str_count_words("") == 0);
    CHECK(str_count_words("   ") == 0);
    CHECK(str_count_words("one") == 1);
    CHECK(str_count_words("  two\twords\n") == 2);

    CHECK(str_starts_with("dagfs.toml", "dagfs"));
    CHECK(!str_starts_with("dag", "dagfs"));
    CHECK(str_starts_with("anything", ""));
}
