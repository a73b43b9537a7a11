/*
 * counter: a stateful example plughost plugin written in C.
 *
 * Implements the "gk" v1 wasm ABI (docs/wasm-abi.md) as a WASI reactor:
 *
 *   exports  memory, _initialize (from crt1-reactor), gk_register, gk_call,
 *            gk_malloc, gk_free
 *   imports  gk.host_call, gk.log, gk.error
 *
 * Every buffer handed across the boundary is a (ptr, len) pair; strings are
 * NOT NUL-terminated. Results are packed into an i64 as (ptr << 32) | len and
 * live in malloc'd memory that the host releases with gk_free. A result of 0
 * means "no result"; together with a prior gk.error it means "this call failed".
 *
 * The counter lives in a global, so it survives between calls: the host
 * serialises calls to one plugin on one instance (docs/wasm-abi.md).
 *
 * Build: scripts/build-examples.sh
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Host imports (module "gk")                                               */
/* ------------------------------------------------------------------------ */

__attribute__((import_module("gk"), import_name("host_call")))
extern int64_t gk_host_call(int32_t fn_ptr, int32_t fn_len,
                            int32_t args_ptr, int32_t args_len);

__attribute__((import_module("gk"), import_name("log")))
extern void gk_log(int32_t level, int32_t msg_ptr, int32_t msg_len);

__attribute__((import_module("gk"), import_name("error")))
extern void gk_error(int32_t msg_ptr, int32_t msg_len);

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* wasm32 pointers are 32-bit, so a pointer fits in an i32 argument. */
#define PTR32(p) ((int32_t)(uintptr_t)(p))

static void log_str(int32_t level, const char *msg) {
    gk_log(level, PTR32(msg), (int32_t)strlen(msg));
}

static void error_bytes(const char *msg, size_t len) {
    gk_error(PTR32(msg), (int32_t)len);
}

static void error_str(const char *msg) { error_bytes(msg, strlen(msg)); }

/* ------------------------------------------------------------------------ */
/* Memory exports                                                           */
/* ------------------------------------------------------------------------ */

__attribute__((export_name("gk_malloc")))
int32_t gk_malloc(int32_t size) {
    if (size < 0) return 0;
    /* malloc(0) may return NULL; always hand out a real (1-byte) block so the
     * host never mistakes an empty buffer for an allocation failure. */
    return PTR32(malloc(size > 0 ? (size_t)size : 1));
}

__attribute__((export_name("gk_free")))
void gk_free(int32_t ptr) {
    free((void *)(uintptr_t)(uint32_t)ptr);
}

/* Pack a buffer into the ABI's i64: high 32 bits pointer, low 32 bits length,
 * both unsigned. */
static int64_t pack(const void *ptr, size_t len) {
    return (int64_t)(((uint64_t)(uint32_t)(uintptr_t)ptr << 32) |
                     (uint64_t)(uint32_t)len);
}

/* Copy bytes into a fresh malloc'd buffer and return it packed. */
static int64_t result_bytes(const char *data, size_t len) {
    char *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL) {
        error_str("out of memory");
        return 0;
    }
    memcpy(buf, data, len);
    return pack(buf, len);
}

static int64_t result_str(const char *s) { return result_bytes(s, strlen(s)); }

/* ------------------------------------------------------------------------ */
/* Registration                                                             */
/* ------------------------------------------------------------------------ */

static const char REGISTRATION[] =
    "{\"name\":\"counter\","
    "\"version\":\"1.0.0\","
    "\"description\":\"A stateful counter written in C\","
    "\"author\":\"plughost\","
    "\"license\":\"Apache-2.0\","
    "\"permissions\":[\"config\",\"log\"],"
    "\"routes\":[],"
    "\"i18n\":{}}";

/* The host frees whatever we return, so hand back a malloc'd copy rather than
 * a pointer into static data. */
__attribute__((export_name("gk_register")))
int64_t gk_register(void) {
    return result_bytes(REGISTRATION, sizeof(REGISTRATION) - 1);
}

/* ------------------------------------------------------------------------ */
/* A tiny JSON integer reader                                               */
/* ------------------------------------------------------------------------ */

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parse an optional '-' followed by decimal digits starting at s[*pos].
 * On success stores the value, advances *pos past the number and returns 1.
 * Returns 0 on no digits or int64 overflow. */
static int parse_int64(const char *s, size_t len, size_t *pos, int64_t *out) {
    size_t i = *pos;
    int negative = 0;
    if (i < len && s[i] == '-') {
        negative = 1;
        i++;
    }
    size_t digits_start = i;
    /* Accumulate as a magnitude in uint64 so INT64_MIN is representable. */
    uint64_t mag = 0;
    const uint64_t limit = negative ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (mag > (limit - d) / 10u) return 0; /* would overflow */
        mag = mag * 10u + d;
        i++;
    }
    if (i == digits_start) return 0;
    /* "12.5" or "1e3" are numbers, but not integers. */
    if (i < len && (s[i] == '.' || s[i] == 'e' || s[i] == 'E')) return 0;
    *out = negative ? (int64_t)(0u - mag) : (int64_t)mag;
    *pos = i;
    return 1;
}

/* Find the key `"by"` in a JSON object and parse its integer value.
 * Returns 1 and sets *out if present and valid, 0 if the key is absent,
 * -1 if present but not an integer. This is deliberately not a full JSON
 * parser: the example only needs one optional integer field. */
static int find_by(const char *args, size_t len, int64_t *out) {
    static const char key[] = "\"by\"";
    const size_t key_len = sizeof(key) - 1;
    for (size_t i = 0; i + key_len <= len; i++) {
        if (memcmp(args + i, key, key_len) != 0) continue;
        size_t p = i + key_len;
        while (p < len && is_space(args[p])) p++;
        if (p >= len || args[p] != ':') return -1;
        p++;
        while (p < len && is_space(args[p])) p++;
        if (!parse_int64(args, len, &p, out)) return -1;
        /* The number must end the value: whitespace, ',' or '}' follows. */
        while (p < len && is_space(args[p])) p++;
        if (p < len && args[p] != ',' && args[p] != '}') return -1;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Plugin state                                                             */
/* ------------------------------------------------------------------------ */

static int64_t counter = 0;

static int step_loaded = 0;
static int64_t step = 1;

/* Fetch config "step" from the host the first time it is needed, and cache
 * it: the host call crosses the sandbox boundary, and the config does not
 * change for the life of an instance (a reload makes a new instance).
 * null, a failed host call (result 0) or a non-integer value mean step 1. */
static int64_t get_step(void) {
    if (step_loaded) return step;
    step_loaded = 1;
    step = 1;

    static const char fn[] = "config_get";
    static const char args[] = "{\"key\":\"step\"}";
    int64_t packed = gk_host_call(PTR32(fn), (int32_t)(sizeof(fn) - 1),
                                  PTR32(args), (int32_t)(sizeof(args) - 1));
    if (packed == 0) return step;

    uint64_t u = (uint64_t)packed;
    char *res = (char *)(uintptr_t)(uint32_t)(u >> 32);
    size_t res_len = (size_t)(uint32_t)u;

    /* The result is {"value":<the config value>}, as Go writes it: no spaces. */
    static const char prefix[] = "{\"value\":";
    size_t p = sizeof(prefix) - 1;
    int64_t value;
    if (res_len > p && memcmp(res, prefix, p) == 0
            && parse_int64(res, res_len, &p, &value) && p + 1 == res_len && res[p] == '}') {
        step = value;
    } else {
        log_str(LOG_WARN, "config \"step\" is not an integer; using 1");
    }

    /* The host wrote the result into a buffer it got from gk_malloc, so it
     * is ours to release. */
    free(res);
    return step;
}

static int64_t count_result(void) {
    /* "{\"count\":" + up to 20 chars of int64 + "}" + NUL fits easily. */
    char buf[48];
    int n = snprintf(buf, sizeof(buf), "{\"count\":%lld}", (long long)counter);
    return result_bytes(buf, (size_t)n);
}

/* ------------------------------------------------------------------------ */
/* Functions                                                                */
/* ------------------------------------------------------------------------ */

static int64_t fn_increment(const char *args, size_t args_len) {
    int64_t by;
    int found = find_by(args, args_len, &by);
    if (found < 0) {
        error_str("invalid args: \"by\" must be an integer");
        return 0;
    }
    if (found == 0) by = get_step();
    /* Add as unsigned so overflow wraps instead of being undefined behaviour. */
    counter = (int64_t)((uint64_t)counter + (uint64_t)by);
    return count_result();
}

static int64_t fn_get(void) { return count_result(); }

static int64_t fn_reset(void) {
    counter = 0;
    log_str(LOG_INFO, "counter reset");
    return result_str("{\"count\":0}");
}

static int64_t fn_echo(const char *args, size_t args_len) {
    return result_bytes(args, args_len);
}

static int64_t fn_fail(void) {
    error_str("counter was asked to fail");
    return 0;
}

static int64_t fn_unknown(const char *name, size_t name_len) {
    static const char prefix[] = "unknown function: ";
    const size_t prefix_len = sizeof(prefix) - 1;
    char *msg = malloc(prefix_len + name_len + 1);
    if (msg == NULL) {
        error_str("unknown function");
        return 0;
    }
    memcpy(msg, prefix, prefix_len);
    memcpy(msg + prefix_len, name, name_len);
    error_bytes(msg, prefix_len + name_len);
    free(msg);
    return 0;
}

/* Compare a (ptr, len) name with a C string literal. */
static int name_is(const char *name, size_t len, const char *lit) {
    return len == strlen(lit) && memcmp(name, lit, len) == 0;
}

__attribute__((export_name("gk_call")))
int64_t gk_call(int32_t fn_ptr, int32_t fn_len, int32_t args_ptr, int32_t args_len) {
    const char *name = (const char *)(uintptr_t)(uint32_t)fn_ptr;
    const char *args = (const char *)(uintptr_t)(uint32_t)args_ptr;
    size_t nlen = fn_len > 0 ? (size_t)fn_len : 0;
    size_t alen = args_len > 0 ? (size_t)args_len : 0;

    if (name_is(name, nlen, "increment")) return fn_increment(args, alen);
    if (name_is(name, nlen, "get")) return fn_get();
    if (name_is(name, nlen, "reset")) return fn_reset();
    if (name_is(name, nlen, "echo")) return fn_echo(args, alen);
    if (name_is(name, nlen, "fail")) return fn_fail();
    return fn_unknown(name, nlen);
}
