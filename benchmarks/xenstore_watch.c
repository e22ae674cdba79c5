/*
 * Watch-event latency through libxenstore: the C side of the watch row of
 * benchmarks/xenstore_ops.py (issue 18 item 2).
 *
 *     gcc -O2 -Wall -o xenstore_watch xenstore_watch.c -l:libxenstore.so.4
 *     ./xenstore_watch -n 50 data/xsbench/w
 *
 * The guest image has libxenstore (xenstore-utils needs it) and gcc, not libxen-dev: the six
 * functions and the numbers below are declared here as Xen 4.17's xenstore.h and xs_wire.h
 * declare them; tests/test_bench_xenstore_ops.py compiles them against those headers, where a
 * different declaration is an error.
 *
 * One connection (xs_open(0), the way xenstore-watch opens it: $XENSTORED_PATH, the socket,
 * /dev/xen/xenbus), one watch on PATH with the token "xsbench", its first event (xenstored fires
 * one at once) read and left out. Then N times: the clock (CLOCK_MONOTONIC), a write of "c<i>" to
 * PATH on the same connection, xs_read_watch until an event for PATH with the token arrives, the
 * clock (an event path may be the absolute form of a relative PATH). The process start-up, the connection and the watch's registration are outside the timed
 * part.
 *
 * Output, one "key value" a line: events (N), seconds_per_event (the N latencies summed, over N),
 * path (the path of the last event, as xenstored reported it), last_value (the last value
 * written), other_events (events for another path or token, skipped). No xenstore: one line on
 * stderr, exit 2. Any other failure: one line, exit 1.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- libxenstore's API (xenstore.h, xs_wire.h; checked against them by the tests) ---- */
struct xs_handle;
typedef uint32_t xs_transaction_t;
#define XSW_XBT_NULL 0
#define XSW_WATCH_PATH 0
#define XSW_WATCH_TOKEN 1

struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
              unsigned int len);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
bool xs_unwatch(struct xs_handle *h, const char *path, const char *token);
char **xs_read_watch(struct xs_handle *h, unsigned int *num);

#ifndef XENSTORE_WATCH_ABI_ONLY

#define TOKEN "xsbench"
#define EXIT_MISSING 2
#define MAX_OTHERS 1000

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The event is for path: as given, or (a relative path) as the absolute path ending in it. */
static bool is_watched(const char *event_path, const char *path)
{
    size_t len = strlen(event_path), want = strlen(path);

    if (strcmp(event_path, path) == 0)
        return true;
    return path[0] != '/' && len > want && event_path[len - want - 1] == '/' &&
           strcmp(event_path + len - want, path) == 0;
}

/* Read events until one for path with our token; the others are counted in *others (at most
 * MAX_OTHERS, then a failure). The reported path is copied to seen. */
static int wait_event(struct xs_handle *h, const char *path, char *seen, size_t seen_size,
                      unsigned long *others)
{
    for (;;) {
        unsigned int num = 0;
        char **vec = xs_read_watch(h, &num);

        if (vec == NULL) {
            fprintf(stderr, "xenstore_watch: xs_read_watch: %s\n", strerror(errno));
            return -1;
        }
        if (num > XSW_WATCH_TOKEN && strcmp(vec[XSW_WATCH_TOKEN], TOKEN) == 0 &&
            is_watched(vec[XSW_WATCH_PATH], path)) {
            snprintf(seen, seen_size, "%s", vec[XSW_WATCH_PATH]);
            free(vec);
            return 0;
        }
        free(vec);
        if (++*others > MAX_OTHERS) {
            fprintf(stderr, "xenstore_watch: %d events, none for %s\n", MAX_OTHERS, path);
            return -1;
        }
    }
}

static int parse_count(const char *text, unsigned long *out)
{
    char *end = NULL;
    unsigned long n;

    errno = 0;
    n = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || n == 0 || text[0] == '-') {
        fprintf(stderr, "xenstore_watch: -n: a positive number of events, not '%s'\n", text);
        return -1;
    }
    *out = n;
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long n = 50, others = 0;
    const char *path;
    char seen[4096] = "", value[32] = "";
    double total = 0.0;
    struct xs_handle *h;
    int opt;

    while ((opt = getopt(argc, argv, "n:")) != -1) {
        if (opt != 'n' || parse_count(optarg, &n) != 0)
            return 1;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "xenstore_watch: usage: xenstore_watch [-n EVENTS] PATH\n");
        return 1;
    }
    path = argv[optind];
    h = xs_open(0);
    if (h == NULL) {
        fprintf(stderr, "xenstore_watch: no xenstore: xs_open: %s\n", strerror(errno));
        return EXIT_MISSING;
    }
    if (!xs_watch(h, path, TOKEN)) {
        fprintf(stderr, "xenstore_watch: xs_watch %s: %s\n", path, strerror(errno));
        xs_close(h);
        return 1;
    }
    if (wait_event(h, path, seen, sizeof(seen), &others) != 0) {
        xs_close(h);
        return 1;
    }
    for (unsigned long i = 0; i < n; i++) {
        double start;

        snprintf(value, sizeof(value), "c%lu", i);
        start = now();
        if (!xs_write(h, XSW_XBT_NULL, path, value, (unsigned int)strlen(value))) {
            fprintf(stderr, "xenstore_watch: xs_write %s: %s\n", path, strerror(errno));
            xs_close(h);
            return 1;
        }
        if (wait_event(h, path, seen, sizeof(seen), &others) != 0) {
            xs_close(h);
            return 1;
        }
        total += now() - start;
    }
    xs_unwatch(h, path, TOKEN);
    xs_close(h);
    printf("events %lu\nseconds_per_event %.9e\npath %s\nlast_value %s\nother_events %lu\n", n,
           total / (double)n, seen, value, others);
    return 0;
}

#endif /* XENSTORE_WATCH_ABI_ONLY */
