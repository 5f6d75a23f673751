# Turns every cli/templates/**/*.in into one C file of byte arrays, so the
# moat binary carries the templates of `moat new service` (cli/new.c).
# Usage: cmake -DDIR=<templates dir> -DOUT=<file.c> -P embed.cmake
# The console embeds its pages with the same script (services/console):
# -DGLOB=* -DHEADER=console.h -DTYPE=console_asset -DTABLE=console_assets
# -DCOUNT=console_nassets -DWHAT=services/console/static
if(NOT GLOB)
    set(GLOB "*.in")
    set(HEADER "new.h")
    set(TYPE "cli_template")
    set(TABLE "cli_templates")
    set(COUNT "cli_ntemplates")
    set(WHAT "cli/templates")
endif()
file(GLOB_RECURSE files RELATIVE ${DIR} ${DIR}/${GLOB})
list(SORT files)
set(body "/* Generated from ${WHAT} by embed.cmake: do not edit. */\n")
string(APPEND body "#include \"${HEADER}\"\n\n")
set(table "")
set(i 0)
foreach(f ${files})
    file(READ ${DIR}/${f} hex HEX)
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
    string(APPEND body "static const unsigned char t${i}[] = {${bytes}0x00};\n")
    string(APPEND table "    {\"${f}\", t${i}, sizeof(t${i}) - 1},\n")
    math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "\nconst struct ${TYPE} ${TABLE}[] = {\n${table}};\n")
string(APPEND body "const size_t ${COUNT} = ${i};\n")
file(WRITE ${OUT}.tmp "${body}")
configure_file(${OUT}.tmp ${OUT} COPYONLY)
