/*
 * vnsnap-xen-relay SOCKET — the receiving end `xl migrate -s '' DOM RECEIVER` runs for a live
 * capture (docs/xen.md, agent/xen-driver.ts). xl starts RECEIVER with `sh -c` and talks to it over
 * its stdin/stdout; this program relays them to the Xen driver's unix socket, and nothing else.
 *
 * Why a C program and not the Node relay (agent/xen-relay.ts, kept as the fallback when this is
 * not built): in the pause of a live capture the final pass goes through the relay, and after
 * the driver closes, xl waits for the relay to EXIT before it resumes the domain
 * (xl_migrate.c: failed_resume -> migration_child_report). In a PV dom0 every page-table change
 * is a hypercall, so starting and tearing down a Node process (tens of MB mapped, several
 * threads) costs far more than a tiny static loop; both costs were pause.
 *
 * Behaviour:
 *   - backpressure both ways: a blocking write holds further reads, so a driver that stops
 *     reading holds xl's sender (how the capture "holds at ready");
 *   - stdin's pipe is enlarged (1 MiB) so xl's final pass needs fewer wake-ups of this process;
 *   - when the driver closes the connection (EOF, reset, or a failed write) the relay _exits at
 *     once: no cleanup is needed and any delay would be pause;
 *   - stdin EOF (xl closed its side) half-closes the socket; the relay still forwards what the
 *     driver sends until it closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (256 * 1024)

static char buf[BUF];

/* Write all of it; 0 on success, -1 when the other side is gone. */
static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: vnsnap-xen-relay SOCKET\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a closed peer is an EPIPE, handled below */
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (strlen(argv[1]) >= sizeof sa.sun_path) {
    fprintf(stderr, "vnsnap-xen-relay: socket path too long: %s\n", argv[1]);
    return 2;
  }
  strcpy(sa.sun_path, argv[1]);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "vnsnap-xen-relay: %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  (void)fcntl(0, F_SETPIPE_SZ, 1 << 20); /* best effort: not a pipe, or not permitted */

  struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = s, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      _exit(1);
    }
    if (fds[1].revents) {
      ssize_t n = read(s, buf, BUF);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) _exit(0); /* the driver closed: xl may resume the domain now */
      if (write_all(1, buf, (size_t)n) < 0) _exit(0);
    }
    if (fds[0].revents) {
      ssize_t n = read(0, buf, BUF);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        shutdown(s, SHUT_WR);
        fds[0].fd = -1; /* poll ignores it from now on */
        continue;
      }
      if (write_all(s, buf, (size_t)n) < 0) _exit(0);
    }
  }
}
