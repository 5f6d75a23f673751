/*
 * moat/banned.h - libc functions that must not be used in moat (after git's
 * banned.h). Each is replaced by a bounded or reentrant alternative:
 * strcpy/strcat/strncpy/strncat -> snprintf or moat_buf; sprintf/vsprintf ->
 * snprintf; gmtime/localtime/ctime/asctime -> the _r variants; strtok ->
 * strtok_r. Included last by moat/common.h; system headers must come before.
 */
#ifndef MOAT_BANNED_H
#define MOAT_BANNED_H

#define MOAT_BANNED(func) sorry_##func##_is_a_banned_function

#undef strcpy
#define strcpy(x, y) MOAT_BANNED(strcpy)
#undef strcat
#define strcat(x, y) MOAT_BANNED(strcat)
#undef strncpy
#define strncpy(x, y, n) MOAT_BANNED(strncpy)
#undef strncat
#define strncat(x, y, n) MOAT_BANNED(strncat)
#undef sprintf
#define sprintf(...) MOAT_BANNED(sprintf)
#undef vsprintf
#define vsprintf(...) MOAT_BANNED(vsprintf)
#undef strtok
#define strtok(x, y) MOAT_BANNED(strtok)
#undef gmtime
#define gmtime(t) MOAT_BANNED(gmtime)
#undef localtime
#define localtime(t) MOAT_BANNED(localtime)
#undef ctime
#define ctime(t) MOAT_BANNED(ctime)
#undef asctime
#define asctime(t) MOAT_BANNED(asctime)
#undef gets
#define gets(x) MOAT_BANNED(gets)

#endif /* MOAT_BANNED_H */
