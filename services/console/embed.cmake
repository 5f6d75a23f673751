# Turns every file of services/console/static into one C file of byte
# arrays (struct console_asset, console.h), so the console's binary carries
# its pages: nothing to install, nothing fetched at run time.
# Usage: cmake -DDIR=<static dir> -DOUT=<file.c> -P embed.cmake
file(GLOB files RELATIVE ${DIR} ${DIR}/*)
list(SORT files)
set(body "/* Generated from services/console/static by embed.cmake: do not edit. */\n")
string(APPEND body "#include \"console.h\"\n\n")
set(table "")
set(i 0)
foreach(f ${files})
    file(READ ${DIR}/${f} hex HEX)
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
    string(APPEND body "static const unsigned char a${i}[] = {${bytes}0x00};\n")
    string(APPEND table "    {\"${f}\", a${i}, sizeof(a${i}) - 1},\n")
    math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "\nconst struct console_asset console_assets[] = {\n${table}};\n")
string(APPEND body "const size_t console_nassets = ${i};\n")
file(WRITE ${OUT}.tmp "${body}")
configure_file(${OUT}.tmp ${OUT} COPYONLY)
