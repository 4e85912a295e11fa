/*
 * netfence's bind shim: a process that cannot listen in another network namespace (Squid)
 * is handed listening sockets made there, through its own bind(2). See bindshim.py.
 *
 * Preloaded (LD_PRELOAD) with NETFENCE_BIND_FDS set to comma-separated entries
 * "FD/ADDRESS/PORT": FD is an inherited listening socket, to be taken when the process
 * binds a socket of the same type to ADDRESS:PORT (an address of the host's that nothing
 * else uses). That bind() turns the process's descriptor into a copy of FD and succeeds:
 * the process listens on the handed socket without knowing it. The inherited descriptors
 * stay open (close-on-exec), so that a process closing its copy and binding again
 * (Squid's reconfigure) takes the same socket, whose queue holds the clients meanwhile.
 * Every other bind() is the C library's. The entries are read at the first bind() and the
 * variable removed: the process's children never act on descriptors they do not have.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ENTRIES 8

struct entry {
    int fd;
    int type;
    struct sockaddr_storage address;
};

static struct entry entries[MAX_ENTRIES];
static int count;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int parse_address(const char *host, const char *port, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    struct sockaddr_in *four = (struct sockaddr_in *)out;
    struct sockaddr_in6 *six = (struct sockaddr_in6 *)out;
    int number = atoi(port);
    if (number <= 0 || number > 65535)
        return -1;
    if (inet_pton(AF_INET, host, &four->sin_addr) == 1) {
        four->sin_family = AF_INET;
        four->sin_port = htons((uint16_t)number);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &six->sin6_addr) == 1) {
        six->sin6_family = AF_INET6;
        six->sin6_port = htons((uint16_t)number);
        return 0;
    }
    return -1;
}

static void read_entries(void) {
    const char *value = getenv("NETFENCE_BIND_FDS");
    if (value == NULL)
        return;
    char *copy = strdup(value);
    char *rest = NULL;
    for (char *item = strtok_r(copy, ",", &rest); item != NULL && count < MAX_ENTRIES;
         item = strtok_r(NULL, ",", &rest)) {
        char *host = strchr(item, '/');
        char *port = host ? strrchr(host + 1, '/') : NULL;
        if (port == NULL)
            continue;
        *host++ = '\0';
        *port++ = '\0';
        struct entry *e = &entries[count];
        socklen_t size = sizeof e->type;
        e->fd = atoi(item);
        if (parse_address(host, port, &e->address) != 0 ||
            getsockopt(e->fd, SOL_SOCKET, SO_TYPE, &e->type, &size) != 0)
            continue;
        fcntl(e->fd, F_SETFD, FD_CLOEXEC);
        count++;
    }
    free(copy);
    unsetenv("NETFENCE_BIND_FDS");
}

static int same_address(const struct sockaddr_storage *ours, const struct sockaddr *theirs,
                        socklen_t length) {
    if (ours->ss_family != theirs->sa_family)
        return 0;
    if (theirs->sa_family == AF_INET && length >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const void *)ours, *b = (const void *)theirs;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    if (theirs->sa_family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const void *)ours, *b = (const void *)theirs;
        return a->sin6_port == b->sin6_port &&
               memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
    }
    return 0;
}

static int take(int fd, const struct entry *e) {
    if (fd == e->fd)
        return 0;
    int descriptor = fcntl(fd, F_GETFD);
    int status = fcntl(fd, F_GETFL);
    if (descriptor < 0 || status < 0 ||
        dup3(e->fd, fd, (descriptor & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0)
        return -1;
    /* The process set its socket's flags (O_NONBLOCK) before binding: they now belong to
     * the handed socket's open file. */
    return fcntl(fd, F_SETFL, status) < 0 ? -1 : 0;
}

int bind(int fd, const struct sockaddr *address, socklen_t length) {
    static int (*next)(int, const struct sockaddr *, socklen_t);
    if (next == NULL)
        next = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    pthread_once(&once, read_entries);
    int type;
    socklen_t size = sizeof type;
    if (count > 0 && address != NULL &&
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0) {
        for (int i = 0; i < count; i++) {
            if (entries[i].type == type && same_address(&entries[i].address, address, length))
                return take(fd, &entries[i]);
        }
    }
    if (next == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return next(fd, address, length);
}
