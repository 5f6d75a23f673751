/*
 * replay.c - runs a fuzz target over every file of its committed corpus,
 * as an ordinary ctest test (no libFuzzer needed): `replay_<target> DIR...`.
 * With -DMOAT_FUZZ=ON the same target also builds as a libFuzzer binary
 * (fuzz_<target>) to grow the corpus; see fuzz/README.md.
 */
#include "moat/common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return 1;
    }
    struct moat_buf b = MOAT_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        moat_buf_add(&b, chunk, n);
    fclose(f);
    /* An exact-size heap copy, so ASan sees reads past the input. */
    uint8_t *data = moat_xmalloc(b.len ? b.len : 1);
    memcpy(data, b.data ? b.data : "", b.len);
    LLVMFuzzerTestOneInput(data, b.len);
    free(data);
    moat_buf_release(&b);
    return 0;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (!d) {
            failed |= run_file(argv[i]);
            count++;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char *path = moat_xasprintf("%s/%s", argv[i], e->d_name);
            failed |= run_file(path);
            free(path);
            count++;
        }
        closedir(d);
    }
    printf("replayed %zu inputs\n", count);
    if (count == 0) {
        fprintf(stderr, "replay: no inputs (empty corpus?)\n");
        return 1;
    }
    return failed;
}
