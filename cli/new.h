/*
 * cli/new.h - the templates of `moat new service` (cli/new.c): the files
 * under cli/templates/, embedded in the moat binary at build time by
 * cli/templates/embed.cmake. The arrays are static and never freed.
 */
#ifndef MOAT_CLI_NEW_H
#define MOAT_CLI_NEW_H

#include <stddef.h>

struct cli_template {
    const char *path;          /* "services/@name@/main.c.in" */
    const unsigned char *text; /* the file, NUL-terminated */
    size_t len;                /* bytes, without the NUL */
};

extern const struct cli_template cli_templates[];
extern const size_t cli_ntemplates;

#endif /* MOAT_CLI_NEW_H */
