/* A power cut for one process, as an LD_PRELOAD library (tests/integration/test_redis_powercut.py).
 *
 * What a process writes with write() to a file under $POWERCUT_DIR stays in this library's
 * memory, as it would stay in the page cache, until the process calls fsync() or fdatasync()
 * on that descriptor: only then does it reach the file. So `kill -9` of the process loses what
 * a power cut would lose: everything written since the last sync. A descriptor closed without
 * a sync loses its unsynced bytes at once (nothing the process cannot see again afterwards,
 * as it only writes these files). Writes through stdio (fwrite) and renames are not held:
 * Redis syncs its RDB files and its AOF manifest before it renames them, and this library
 * takes the rename as durable.
 *
 * Build: gcc -shared -fPIC -O2 -o powercut.so powercut.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FDS 4096

struct held { int tracked; char *data; size_t length, size; };

static struct held held[MAX_FDS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);

static void load(void) {
    if (real_write) return;
    real_open = dlsym(RTLD_NEXT, "open");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_close = dlsym(RTLD_NEXT, "close");
    real_write = dlsym(RTLD_NEXT, "write");
}

/* Is `path` (relative to the working directory when not absolute) under $POWERCUT_DIR? */
static int under_dir(const char *path) {
    const char *dir = getenv("POWERCUT_DIR");
    char cwd[PATH_MAX], full[PATH_MAX * 2];
    if (!dir || !path) return 0;
    if (path[0] == '/') {
        strncpy(full, path, sizeof full - 1);
        full[sizeof full - 1] = 0;
    } else {
        if (!getcwd(cwd, sizeof cwd)) return 0;
        strcpy(full, cwd);
        strcat(full, "/");
        strncat(full, path, sizeof full - strlen(full) - 1);
    }
    size_t n = strlen(dir);
    return strncmp(full, dir, n) == 0 && (full[n] == '/' || full[n] == 0);
}

static void track(int fd, const char *path, int flags) {
    if (fd < 0 || fd >= MAX_FDS || !(flags & (O_WRONLY | O_RDWR)) || !under_dir(path)) return;
    pthread_mutex_lock(&lock);
    held[fd].tracked = 1;
    held[fd].length = 0;
    pthread_mutex_unlock(&lock);
}

/* Write what `fd` holds to the file; the lock is held. */
static int spill(int fd) {
    struct held *h = &held[fd];
    size_t done = 0;
    while (done < h->length) {
        ssize_t n = real_write(fd, h->data + done, h->length - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (size_t)n;
    }
    h->length = 0;
    return 0;
}

/* open's optional third argument, read where it is given (`flags` names the last fixed one). */
#define MODE_ARG(flags, mode) do {                  \
        if ((flags) & O_CREAT) {                    \
            va_list args;                           \
            va_start(args, flags);                  \
            mode = va_arg(args, mode_t);            \
            va_end(args);                           \
        }                                           \
    } while (0)

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    load();
    MODE_ARG(flags, mode);
    int fd = real_open(path, flags, mode);
    track(fd, path, flags);
    return fd;
}

int open64(const char *path, int flags, ...) {
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return open(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    load();
    MODE_ARG(flags, mode);
    int fd = real_openat(dirfd, path, flags, mode);
    if (dirfd == AT_FDCWD || path[0] == '/') track(fd, path, flags);
    return fd;
}

ssize_t write(int fd, const void *buffer, size_t count) {
    load();
    if (fd < 0 || fd >= MAX_FDS) return real_write(fd, buffer, count);
    pthread_mutex_lock(&lock);
    struct held *h = &held[fd];
    if (!h->tracked) {
        pthread_mutex_unlock(&lock);
        return real_write(fd, buffer, count);
    }
    if (h->length + count > h->size) {
        size_t size = h->size ? h->size : 65536;
        while (size < h->length + count) size *= 2;
        char *data = realloc(h->data, size);
        if (!data) {
            pthread_mutex_unlock(&lock);
            errno = ENOMEM;
            return -1;
        }
        h->data = data;
        h->size = size;
    }
    memcpy(h->data + h->length, buffer, count);
    h->length += count;
    pthread_mutex_unlock(&lock);
    return (ssize_t)count;
}

static int sync_with(int fd, int (*real)(int)) {
    load();
    if (fd >= 0 && fd < MAX_FDS) {
        pthread_mutex_lock(&lock);
        int failed = held[fd].tracked ? spill(fd) : 0;
        pthread_mutex_unlock(&lock);
        if (failed) return -1;
    }
    return real(fd);
}

int fsync(int fd) { load(); return sync_with(fd, real_fsync); }
int fdatasync(int fd) { load(); return sync_with(fd, real_fdatasync); }

int close(int fd) {
    load();
    if (fd >= 0 && fd < MAX_FDS) {
        pthread_mutex_lock(&lock);
        held[fd].tracked = 0;           /* unsynced bytes are gone, as in a power cut */
        held[fd].length = 0;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}
