/*
 * vnguest — the workload program of the vnsnap test guest.
 *
 * One static binary with modes:
 *   vnguest run [key=value ...]     the guest workloads; settings come from /proc/cmdline
 *                                   (vnsnap.KEY=VALUE) and then from the arguments (KEY=VALUE or
 *                                   vnsnap.KEY=VALUE), which override.
 *   vnguest query HOST:PORT [SECS]  connect to a status port and print the one JSON line it sends.
 *   vnguest disk-scan FILE          scan a raw disk image (or device) written by the disk writer
 *                                   and print a JSON line with the last record found.
 *   vnguest version
 *
 * Workloads of `run` (see docs/guest.md):
 *   - stream receiver on port `listen` (default 7001): every connection starts with a 64-byte
 *     hello, then carries consecutive 64-bit big-endian counters from 0; every 8-byte word is
 *     checked, so any lost, duplicated, reordered or corrupt byte is an error;
 *   - one stream sender per peer in `peers` (HOST:PORT[@KiB/s],...): connects once, sends as fast
 *     as the connection takes (or at the given rate), reconnects only if the connection breaks
 *     (each reconnect is counted: a reconnect means the stream broke);
 *   - memory load: `mem` MiB touched at `memrate` MiB/s, each page carrying (pass, page) which
 *     the next pass checks;
 *   - disk writer: numbered 4 KiB records appended to the raw disk `disk` (O_DIRECT|O_DSYNC) at
 *     `diskrate` records/s; before each write it checks that the disk's last record is the one
 *     the in-memory counter says and that the next slot is not written yet (after a restore this
 *     proves memory and disk were captured at the same instant);
 *   - status service on port `status` (default 7070): answers every connection with one JSON
 *     line of all counters and closes; the same line is printed as "VNSTAT {...}" on stdout
 *     (the serial console) every `report` seconds and written to the virtio-serial port named
 *     org.vnsnap.status when the guest has one (a line sent to that port is answered at once).
 *
 * The virtio-serial port also takes one command besides the status request, for the network
 * benchmark (test/bench/vm-net.ts), which has no other way into a guest on an overlay:
 *   "iperf3 ID ARG..."  runs /usr/bin/iperf3 ARG... -J (argv split on spaces, no shell, only
 *                       iperf3; at most IPERF_MAX_ARGS arguments; killed after IPERF_MAX_S s)
 *                       in a thread and answers "IPERF3-START ID" at once, then one line
 *                       "IPERF3 ID {JSON}" (its -J output on one line) or "IPERF3 ID !message".
 *                       ID is [A-Za-z0-9_-]{1,32}; a command whose ID is among the last
 *                       IPERF_SEEN started is not run again (the host repeats a command until
 *                       it sees the START line, since a line sent as the port opens can be lost).
 * Any other line is a status request. Lines go out whole: a write the port refuses for now
 * (EAGAIN) waits for it, so a long JSON line is never cut.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VNGUEST_VERSION "1"
#define HELLO_LEN 64
#define HELLO_MAGIC "VNSH"
#define MAX_PEERS 16
#define MAX_IN 32
#define CHUNK (64 * 1024)
#define REC_SIZE 4096
#define REC_MAGIC "VNSREC01"
#define IPERF_BIN "/usr/bin/iperf3"
#define IPERF_MAX_ARGS 32
#define IPERF_MAX_S 600
#define IPERF_SEEN 16
#define IPERF_MAX_OUT (4 << 20)

typedef _Atomic uint64_t counter_t;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Milliseconds from last to t; 0 when a receiver updated last after t was read (the status
 * report reads its clock once, before the receivers' records, so last can be newer). */
static uint64_t idle_since(uint64_t t, uint64_t last) {
  return last > t ? 0 : t - last;
}

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_ms(uint64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void put_be64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    p[i] = (uint8_t)v;
    v >>= 8;
  }
}

static uint64_t get_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

static void logmsg(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stdout, "vnguest: %s\n", buf);
  fflush(stdout);
}

/* ------------------------------------------------------------------ settings */

struct peer_cfg {
  char host[64];
  int port;
  uint64_t rate; /* bytes/s, 0 = as fast as possible */
};

static struct {
  char name[32];
  char ip[64];
  int listen_port;
  int status_port;
  struct peer_cfg peers[MAX_PEERS];
  int npeers;
  uint64_t rate_kib; /* default sender rate */
  uint64_t mem_mib;
  uint64_t memrate_mib;
  char disk[128];
  uint64_t diskrate;
  uint64_t report_s;
  char vport_name[64];
  char bind[64];
} cfg = {
    .name = "guest",
    .listen_port = 7001,
    .status_port = 7070,
    .mem_mib = 0,
    .memrate_mib = 8,
    .disk = "auto",
    .diskrate = 20,
    .report_s = 5,
    .vport_name = "org.vnsnap.status",
};

static char peers_raw[1024];

static void set_opt(const char *key, const char *val) {
  if (strncmp(key, "vnsnap.", 7) == 0) key += 7;
  if (!strcmp(key, "name")) snprintf(cfg.name, sizeof cfg.name, "%s", val);
  else if (!strcmp(key, "ip")) snprintf(cfg.ip, sizeof cfg.ip, "%s", val);
  else if (!strcmp(key, "listen")) cfg.listen_port = atoi(val);
  else if (!strcmp(key, "status")) cfg.status_port = atoi(val);
  else if (!strcmp(key, "peers")) snprintf(peers_raw, sizeof peers_raw, "%s", val);
  else if (!strcmp(key, "rate")) cfg.rate_kib = strtoull(val, NULL, 10);
  else if (!strcmp(key, "mem")) cfg.mem_mib = strtoull(val, NULL, 10);
  else if (!strcmp(key, "memrate")) cfg.memrate_mib = strtoull(val, NULL, 10);
  else if (!strcmp(key, "disk")) snprintf(cfg.disk, sizeof cfg.disk, "%s", val);
  else if (!strcmp(key, "diskrate")) cfg.diskrate = strtoull(val, NULL, 10);
  else if (!strcmp(key, "report")) cfg.report_s = strtoull(val, NULL, 10);
  else if (!strcmp(key, "vport")) snprintf(cfg.vport_name, sizeof cfg.vport_name, "%s", val);
  else if (!strcmp(key, "bind")) snprintf(cfg.bind, sizeof cfg.bind, "%s", val);
  /* other vnsnap.* keys (mtu, gw, shell, ...) belong to /init */
}

static void parse_words(char *s, int only_vnsnap) {
  for (char *tok = strtok(s, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
    char *eq = strchr(tok, '=');
    if (!eq) continue;
    *eq = 0;
    if (!only_vnsnap || strncmp(tok, "vnsnap.", 7) == 0) set_opt(tok, eq + 1);
  }
}

static void parse_peers(void) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", peers_raw);
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok && cfg.npeers < MAX_PEERS; tok = strtok_r(NULL, ",", &save)) {
    struct peer_cfg *p = &cfg.peers[cfg.npeers];
    char *at = strchr(tok, '@');
    p->rate = cfg.rate_kib * 1024;
    if (at) {
      *at = 0;
      p->rate = strtoull(at + 1, NULL, 10) * 1024;
    }
    char *colon = strrchr(tok, ':');
    p->port = cfg.listen_port;
    if (colon) {
      *colon = 0;
      p->port = atoi(colon + 1);
    }
    if (!*tok) continue;
    snprintf(p->host, sizeof p->host, "%s", tok);
    cfg.npeers++;
  }
}

/* ------------------------------------------------------------------ counters */

static uint64_t boot_nonce;
static uint64_t start_ms;
static counter_t status_requests;

struct out_stream {
  struct peer_cfg *peer;
  int index;
  counter_t bytes;       /* bytes sent, all connections */
  counter_t conn_bytes;  /* bytes sent on the current connection */
  counter_t connects;    /* successful connections */
  counter_t reconnects;  /* connections after the first: the stream broke */
  counter_t connect_failures;
  counter_t errors;      /* send errors that broke a connection */
  _Atomic int connected;
  char last_error[96];
  pthread_mutex_t lock;
};

struct in_stream {
  int used;
  char from_name[40];
  uint32_t stream_index;
  uint64_t nonce;
  char addr[64];
  uint64_t connections;
  uint64_t reconnects;
  uint64_t reboots; /* a hello with another nonce: the sender program restarted */
  uint64_t bytes;   /* all connections */
  uint64_t conn_bytes;
  uint64_t words;   /* words checked on the current connection == next expected counter */
  uint64_t errors;
  uint64_t last_rx_ms;
  int open;
  char first_error[160];
  char close_reason[64];
};

static struct out_stream outs[MAX_PEERS];
static struct in_stream ins[MAX_IN];
static pthread_mutex_t ins_lock = PTHREAD_MUTEX_INITIALIZER;
static counter_t in_bad_hellos;

static struct {
  int enabled;
  uint64_t mib, rate;
  counter_t passes, pages_touched, errors;
  char first_error[128];
} mem;

static struct {
  int enabled;
  char dev[128];
  int direct;
  uint64_t slots;
  counter_t records;      /* last record number written and completed (in memory) */
  counter_t start_record; /* last record found on the disk when the writer started */
  counter_t checks, check_ok, ahead, behind, corrupt, write_errors;
  counter_t last_check_mem, last_check_disk;
  char first_error[160];
  pthread_mutex_t lock;
} dsk = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void set_err(char *dst, size_t n, pthread_mutex_t *lock, const char *fmt, ...) {
  if (lock) pthread_mutex_lock(lock);
  if (!dst[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, n, fmt, ap);
    va_end(ap);
  }
  if (lock) pthread_mutex_unlock(lock);
}

/* ------------------------------------------------------------------ net helpers */

static int resolve(const char *host, int port, struct sockaddr_in *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  /* numeric IPv4 only: the guest has no resolver (and static glibc's getaddrinfo needs NSS) */
  return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static int write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int read_full(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int listen_tcp(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (cfg.bind[0] && inet_pton(AF_INET, cfg.bind, &sa.sin_addr) != 1) {
    close(fd);
    errno = EINVAL;
    return -1;
  }
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Listen on `port`, retrying every second until it works (logging why it does not yet). */
static int listen_until_up(int port, const char *what) {
  int lfd;
  while ((lfd = listen_tcp(port)) < 0) {
    logmsg("cannot listen on %s port %d: %s", what, port, strerror(errno));
    sleep_ms(1000);
  }
  return lfd;
}

/* The next connection on `lfd`, retrying after a failed accept. */
static int accept_next(int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    sleep_ms(10);
  }
}

/* ------------------------------------------------------------------ stream sender */

static void *sender_main(void *arg) {
  struct out_stream *st = arg;
  uint8_t *buf = malloc(CHUNK);
  uint8_t hello[HELLO_LEN];
  for (;;) {
    struct sockaddr_in sa;
    if (resolve(st->peer->host, st->peer->port, &sa) < 0) {
      atomic_fetch_add(&st->connect_failures, 1);
      sleep_ms(1000);
      continue;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
      if (fd >= 0) close(fd);
      atomic_fetch_add(&st->connect_failures, 1);
      sleep_ms(500);
      continue;
    }
    uint64_t conn_no = atomic_fetch_add(&st->connects, 1) + 1;
    if (conn_no > 1) atomic_fetch_add(&st->reconnects, 1);
    memset(hello, 0, sizeof hello);
    memcpy(hello, HELLO_MAGIC, 4);
    hello[4] = 1; /* version */
    put_be64(hello + 8, boot_nonce);
    put_be64(hello + 16, conn_no);
    put_be64(hello + 24, (uint64_t)st->index);
    memcpy(hello + 32, cfg.name, strnlen(cfg.name, 31));
    atomic_store(&st->conn_bytes, 0);
    if (write_all(fd, hello, sizeof hello) < 0) goto broken;
    atomic_store(&st->connected, 1);
    {
      uint64_t word = 0;       /* next counter to put in the buffer */
      size_t off = CHUNK, len = CHUNK;
      uint64_t t0 = now_us(), sent_since_t0 = 0;
      for (;;) {
        if (off >= len) {
          for (size_t o = 0; o < CHUNK; o += 8) put_be64(buf + o, word++);
          off = 0;
          len = CHUNK;
        }
        size_t want = len - off;
        if (st->peer->rate > 0) {
          /* token bucket: at most rate bytes/s on average, bursts of 1/20 s */
          uint64_t slice = st->peer->rate / 20;
          if (slice < 8) slice = 8;
          if (want > slice) want = slice;
          for (;;) {
            uint64_t el = now_us() - t0;
            uint64_t allowed = (uint64_t)((double)st->peer->rate * (double)el / 1e6);
            if (sent_since_t0 + want <= allowed + slice) break;
            sleep_ms(10);
          }
          if (now_us() - t0 > 10000000u) { /* rebase every 10 s so idle time does not bank credit */
            t0 = now_us();
            sent_since_t0 = 0;
          }
        }
        ssize_t n = write(fd, buf + off, want);
        if (n < 0) {
          if (errno == EINTR) continue;
          goto broken;
        }
        off += (size_t)n;
        sent_since_t0 += (uint64_t)n;
        atomic_fetch_add(&st->bytes, (uint64_t)n);
        atomic_fetch_add(&st->conn_bytes, (uint64_t)n);
      }
    }
  broken:
    atomic_fetch_add(&st->errors, 1);
    set_err(st->last_error, sizeof st->last_error, &st->lock, "connection %" PRIu64 ": %s", conn_no, strerror(errno));
    atomic_store(&st->connected, 0);
    logmsg("stream to %s:%d broke: %s", st->peer->host, st->peer->port, strerror(errno));
    close(fd);
    sleep_ms(1000);
  }
  return NULL;
}

/* ------------------------------------------------------------------ stream receiver */

static void *receiver_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  struct sockaddr_in peer;
  socklen_t plen = sizeof peer;
  char addr[64] = "?";
  if (getpeername(fd, (struct sockaddr *)&peer, &plen) == 0)
    snprintf(addr, sizeof addr, "%s:%d", inet_ntoa(peer.sin_addr), ntohs(peer.sin_port));
  uint8_t hello[HELLO_LEN];
  if (read_full(fd, hello, sizeof hello) < 0 || memcmp(hello, HELLO_MAGIC, 4) != 0) {
    atomic_fetch_add(&in_bad_hellos, 1);
    close(fd);
    return NULL;
  }
  char from[33];
  memcpy(from, hello + 32, 32);
  from[32] = 0;
  uint64_t nonce = get_be64(hello + 8);
  uint32_t sidx = (uint32_t)get_be64(hello + 24);

  pthread_mutex_lock(&ins_lock);
  struct in_stream *st = NULL;
  for (int i = 0; i < MAX_IN; i++)
    if (ins[i].used && ins[i].stream_index == sidx && !strcmp(ins[i].from_name, from)) st = &ins[i];
  if (!st)
    for (int i = 0; i < MAX_IN && !st; i++)
      if (!ins[i].used) {
        st = &ins[i];
        memset(st, 0, sizeof *st);
        st->used = 1;
        snprintf(st->from_name, sizeof st->from_name, "%s", from);
        st->stream_index = sidx;
        st->nonce = nonce;
      }
  if (!st) {
    pthread_mutex_unlock(&ins_lock);
    close(fd);
    return NULL;
  }
  st->connections++;
  if (st->connections > 1) st->reconnects++;
  if (st->nonce != nonce) {
    st->reboots++;
    st->nonce = nonce;
  }
  snprintf(st->addr, sizeof st->addr, "%s", addr);
  st->open = 1;
  st->conn_bytes = 0;
  st->words = 0;
  st->close_reason[0] = 0;
  st->last_rx_ms = now_ms();
  pthread_mutex_unlock(&ins_lock);

  uint8_t *buf = malloc(CHUNK + 8);
  size_t carry = 0;
  uint64_t expect = 0;
  const char *reason = "eof";
  for (;;) {
    ssize_t n = read(fd, buf + carry, CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      reason = n == 0 ? "eof" : strerror(errno);
      break;
    }
    size_t have = carry + (size_t)n;
    size_t whole = have - have % 8;
    uint64_t errs = 0;
    char firstbuf[160] = "";
    for (size_t o = 0; o < whole; o += 8) {
      uint64_t v = get_be64(buf + o);
      if (v != expect) {
        if (!errs)
          snprintf(firstbuf, sizeof firstbuf, "from %s: expected word %" PRIu64 " got %" PRIu64 " (%" PRIu64 " bytes into connection)", from, expect, v,
                   (uint64_t)(st->conn_bytes + o - carry));
        errs++;
        expect = v; /* resynchronise on what arrived */
      }
      expect++;
    }
    carry = have - whole;
    if (carry) memmove(buf, buf + whole, carry);
    pthread_mutex_lock(&ins_lock);
    st->bytes += (uint64_t)n;
    st->conn_bytes += (uint64_t)n;
    st->words = expect;
    st->errors += errs;
    st->last_rx_ms = now_ms();
    if (errs && !st->first_error[0]) snprintf(st->first_error, sizeof st->first_error, "%s", firstbuf);
    pthread_mutex_unlock(&ins_lock);
  }
  pthread_mutex_lock(&ins_lock);
  st->open = 0;
  snprintf(st->close_reason, sizeof st->close_reason, "%s", reason);
  pthread_mutex_unlock(&ins_lock);
  logmsg("stream from %s (%s) closed: %s", from, addr, reason);
  free(buf);
  close(fd);
  return NULL;
}

static void spawn_detached(void *(*fn)(void *), void *arg) {
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 256 * 1024);
  if (pthread_create(&t, &a, fn, arg) != 0) {
    logmsg("pthread_create failed");
    exit(1);
  }
  pthread_attr_destroy(&a);
}

static void *receiver_main(void *arg) {
  (void)arg;
  int lfd = listen_until_up(cfg.listen_port, "stream");
  for (;;) spawn_detached(receiver_conn, (void *)(intptr_t)accept_next(lfd));
  return NULL;
}

/* ------------------------------------------------------------------ memory load */

static void *mem_main(void *arg) {
  (void)arg;
  size_t bytes = (size_t)mem.mib << 20;
  size_t pages = bytes / 4096;
  uint8_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    set_err(mem.first_error, sizeof mem.first_error, NULL, "mmap %zu MiB: %s", (size_t)mem.mib, strerror(errno));
    mem.enabled = 0;
    return NULL;
  }
  /* pages per 10 ms slice */
  double per_slice = (double)mem.rate * 256.0 / 100.0;
  double credit = 0;
  uint64_t pass = 0;
  size_t p = 0;
  uint64_t next = now_us();
  for (;;) {
    credit += per_slice;
    size_t n = (size_t)credit;
    credit -= (double)n;
    for (size_t i = 0; i < n; i++) {
      uint64_t *w = (uint64_t *)(m + p * 4096);
      /* page p was last written in pass `pass - 1` (pass 0 finds zeros) */
      uint64_t want_pass = pass ? pass - 1 : 0, want_page = pass ? (uint64_t)p : 0;
      if (w[0] != want_pass || w[1] != want_page) {
        if (!atomic_fetch_add(&mem.errors, 1))
          set_err(mem.first_error, sizeof mem.first_error, NULL, "page %zu pass %" PRIu64 ": found (%" PRIu64 ",%" PRIu64 ")", p, pass, w[0], w[1]);
      }
      w[0] = pass;
      w[1] = p;
      w[2] = boot_nonce ^ (pass * 0x9e3779b97f4a7c15ull) ^ p; /* and one more word: a real store */
      atomic_fetch_add(&mem.pages_touched, 1);
      if (++p == pages) {
        p = 0;
        pass++;
        atomic_fetch_add(&mem.passes, 1);
      }
    }
    next += 10000;
    uint64_t t = now_us();
    if (next > t) sleep_ms((next - t) / 1000);
    else if (t - next > 1000000) next = t; /* fell far behind (e.g. paused): do not try to catch up */
  }
  return NULL;
}

/* ------------------------------------------------------------------ disk writer */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

/* Record layout (4096 bytes): "VNSREC01", seq (BE64), writer nonce (BE64), time ms (BE64),
 * filler words mix64(seq ^ i) up to byte 4088, checksum (BE64) of everything before it. */
static void make_record(uint8_t *r, uint64_t seq) {
  memcpy(r, REC_MAGIC, 8);
  put_be64(r + 8, seq);
  put_be64(r + 16, boot_nonce);
  put_be64(r + 24, now_ms() - start_ms);
  for (size_t o = 32; o < REC_SIZE - 8; o += 8) put_be64(r + o, mix64(seq ^ o));
  uint64_t h = 1469598103934665603ull;
  for (size_t o = 0; o < REC_SIZE - 8; o += 8) h = mix64(h ^ get_be64(r + o));
  put_be64(r + REC_SIZE - 8, h);
}

/* 0: all zero (never written); 1: valid record (*seq set); -1: corrupt */
static int check_record(const uint8_t *r, uint64_t *seq) {
  if (memcmp(r, REC_MAGIC, 8) != 0) {
    for (size_t i = 0; i < REC_SIZE; i++)
      if (r[i]) return -1;
    return 0;
  }
  uint64_t h = 1469598103934665603ull;
  for (size_t o = 0; o < REC_SIZE - 8; o += 8) h = mix64(h ^ get_be64(r + o));
  if (h != get_be64(r + REC_SIZE - 8)) return -1;
  uint64_t s = get_be64(r + 8);
  for (size_t o = 32; o < REC_SIZE - 8; o += 8)
    if (get_be64(r + o) != mix64(s ^ o)) return -1;
  *seq = s;
  return 1;
}

static uint64_t dev_size(int fd) {
  uint64_t sz = 0;
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) return (uint64_t)st.st_size;
  if (ioctl(fd, BLKGETSIZE64, &sz) == 0) return sz;
  return 0;
}

struct scan_result {
  uint64_t slots, last_seq, valid, corrupt, last_slot;
};

/* Find the highest-numbered valid record (records wrap around the device). */
static int scan_disk(int fd, struct scan_result *res) {
  memset(res, 0, sizeof *res);
  res->slots = dev_size(fd) / REC_SIZE;
  const size_t batch = 256;
  uint8_t *buf;
  if (posix_memalign((void **)&buf, 4096, batch * REC_SIZE) != 0) return -1;
  for (uint64_t s = 0; s < res->slots; s += batch) {
    size_t n = (size_t)(res->slots - s < batch ? res->slots - s : batch);
    ssize_t got = pread(fd, buf, n * REC_SIZE, (off_t)(s * REC_SIZE));
    if (got < (ssize_t)(n * REC_SIZE)) {
      free(buf);
      return -1;
    }
    for (size_t i = 0; i < n; i++) {
      uint64_t seq;
      int k = check_record(buf + i * REC_SIZE, &seq);
      if (k < 0) res->corrupt++;
      if (k > 0) {
        res->valid++;
        if (seq > res->last_seq) {
          res->last_seq = seq;
          res->last_slot = s + i;
        }
      }
    }
  }
  free(buf);
  return 0;
}

static int disk_open(const char *path, int *direct) {
  int fd = open(path, O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
  *direct = 1;
  if (fd < 0 && errno == EINVAL) {
    fd = open(path, O_RDWR | O_DSYNC | O_CLOEXEC);
    *direct = 0;
  }
  return fd;
}

static void *disk_main(void *arg) {
  (void)arg;
  int fd = disk_open(dsk.dev, &dsk.direct);
  if (fd < 0) {
    set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "open %s: %s", dsk.dev, strerror(errno));
    dsk.enabled = 0;
    return NULL;
  }
  struct scan_result sr;
  if (scan_disk(fd, &sr) < 0 || sr.slots < 2) {
    set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "scan %s failed (slots=%" PRIu64 ")", dsk.dev, sr.slots);
    dsk.enabled = 0;
    close(fd);
    return NULL;
  }
  dsk.slots = sr.slots;
  atomic_store(&dsk.start_record, sr.last_seq);
  atomic_store(&dsk.records, sr.last_seq);
  logmsg("disk %s: %" PRIu64 " slots, continuing after record %" PRIu64 "%s", dsk.dev, sr.slots, sr.last_seq, dsk.direct ? "" : " (no O_DIRECT)");
  uint8_t *rec, *chk;
  if (posix_memalign((void **)&rec, 4096, REC_SIZE) || posix_memalign((void **)&chk, 4096, REC_SIZE)) return NULL;
  uint64_t interval_us = cfg.diskrate ? 1000000u / cfg.diskrate : 0;
  uint64_t next = now_us();
  for (;;) {
    uint64_t last = atomic_load(&dsk.records);
    uint64_t seq = last + 1;
    /* 1. the slots of the last two records must hold exactly those records (two, not one: a
     * loss of the newest writes is caught even when it happened between a check and a write) */
    int ok = 1;
    uint64_t found = 0;
    for (uint64_t want = last; ok && want > 0 && want + 2 > last; want--) {
      if (pread(fd, chk, REC_SIZE, (off_t)(((want - 1) % dsk.slots) * REC_SIZE)) != REC_SIZE) {
        ok = -1;
        break;
      }
      uint64_t s = 0;
      int k = check_record(chk, &s);
      if (k < 0) {
        atomic_fetch_add(&dsk.corrupt, 1);
        set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "record %" PRIu64 " is corrupt on disk", want);
        ok = 0;
      } else if (k == 0 || s < want) {
        atomic_fetch_add(&dsk.behind, 1);
        set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "disk behind memory: memory says record %" PRIu64 ", the slot of record %" PRIu64 " holds %" PRIu64, last, want, k ? s : 0);
        ok = 0;
      } else if (s > want) {
        atomic_fetch_add(&dsk.ahead, 1);
        set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "disk ahead of memory: memory says record %" PRIu64 ", the slot of record %" PRIu64 " holds %" PRIu64, last, want, s);
        ok = 0;
      }
      if (want == last) found = k > 0 ? s : 0;
    }
    if (ok < 0) {
      atomic_fetch_add(&dsk.write_errors, 1);
      sleep_ms(1000);
      continue;
    }
    /* 2. the next slot must not hold a record this lap (or a later one) */
    if (pread(fd, chk, REC_SIZE, (off_t)(((seq - 1) % dsk.slots) * REC_SIZE)) != REC_SIZE) {
      atomic_fetch_add(&dsk.write_errors, 1);
      sleep_ms(1000);
      continue;
    }
    uint64_t s2 = 0;
    int k2 = check_record(chk, &s2);
    if (k2 > 0 && s2 >= seq) {
      atomic_fetch_add(&dsk.ahead, 1);
      set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "disk ahead of memory: memory says record %" PRIu64 ", the disk already has %" PRIu64, last, s2);
      ok = 0;
      if (s2 > found) found = s2;
    }
    atomic_store(&dsk.last_check_mem, last);
    atomic_store(&dsk.last_check_disk, last > 0 ? found : (k2 > 0 ? s2 : 0));
    atomic_fetch_add(&dsk.checks, 1);
    if (ok) atomic_fetch_add(&dsk.check_ok, 1);
    /* 3. write the next record; only when the device has completed it does memory say so */
    make_record(rec, seq);
    if (pwrite(fd, rec, REC_SIZE, (off_t)(((seq - 1) % dsk.slots) * REC_SIZE)) != REC_SIZE) {
      atomic_fetch_add(&dsk.write_errors, 1);
      set_err(dsk.first_error, sizeof dsk.first_error, &dsk.lock, "write record %" PRIu64 ": %s", seq, strerror(errno));
      sleep_ms(1000);
      continue;
    }
    atomic_store(&dsk.records, seq);
    if (interval_us) {
      next += interval_us;
      uint64_t t = now_us();
      if (next > t) sleep_ms((next - t) / 1000);
      else if (t - next > 1000000) next = t;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------------ status JSON */

struct sbuf {
  char *p;
  size_t len, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    b->cap = b->cap * 2 + (size_t)(n > 0 ? n : 256);
    b->p = realloc(b->p, b->cap);
  }
}

static void sb_str(struct sbuf *b, const char *s) {
  sb_printf(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') sb_printf(b, "\\%c", c);
    else if (c < 0x20) sb_printf(b, "\\u%04x", c);
    else sb_printf(b, "%c", c);
  }
  sb_printf(b, "\"");
}

#define U(x) ((uint64_t)atomic_load(&(x)))

/* One line of JSON (no newline) with every counter; caller frees. */
static char *status_json(void) {
  struct sbuf b = {malloc(4096), 0, 4096};
  uint64_t t = now_ms();
  uint64_t req = atomic_fetch_add(&status_requests, 1) + 1;
  sb_printf(&b, "{\"v\":1,\"name\":");
  sb_str(&b, cfg.name);
  sb_printf(&b, ",\"ip\":");
  sb_str(&b, cfg.ip);
  sb_printf(&b, ",\"nonce\":\"%016" PRIx64 "\",\"uptime_ms\":%" PRIu64 ",\"seq\":%" PRIu64, boot_nonce, t - start_ms, req);

  uint64_t tot_sent = 0, tot_recv = 0, tot_err = 0, tot_rc = 0;
  sb_printf(&b, ",\"out\":[");
  for (int i = 0; i < cfg.npeers; i++) {
    struct out_stream *o = &outs[i];
    char host[80];
    snprintf(host, sizeof host, "%s:%d", o->peer->host, o->peer->port);
    pthread_mutex_lock(&o->lock);
    char le[96];
    snprintf(le, sizeof le, "%s", o->last_error);
    pthread_mutex_unlock(&o->lock);
    sb_printf(&b, "%s{\"peer\":", i ? "," : "");
    sb_str(&b, host);
    sb_printf(&b,
              ",\"index\":%d,\"connected\":%s,\"bytes\":%" PRIu64 ",\"conn_bytes\":%" PRIu64 ",\"connects\":%" PRIu64 ",\"reconnects\":%" PRIu64
              ",\"connect_failures\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"rate\":%" PRIu64 ",\"last_error\":",
              o->index, atomic_load(&o->connected) ? "true" : "false", U(o->bytes), U(o->conn_bytes), U(o->connects), U(o->reconnects),
              U(o->connect_failures), U(o->errors), o->peer->rate);
    sb_str(&b, le);
    sb_printf(&b, "}");
    tot_sent += U(o->bytes);
    tot_err += U(o->errors);
    tot_rc += U(o->reconnects);
  }
  sb_printf(&b, "],\"in\":[");
  pthread_mutex_lock(&ins_lock);
  int first = 1;
  for (int i = 0; i < MAX_IN; i++) {
    struct in_stream *s = &ins[i];
    if (!s->used) continue;
    sb_printf(&b, "%s{\"from\":", first ? "" : ",");
    first = 0;
    sb_str(&b, s->from_name);
    sb_printf(&b, ",\"index\":%u,\"addr\":", s->stream_index);
    sb_str(&b, s->addr);
    sb_printf(&b,
              ",\"open\":%s,\"bytes\":%" PRIu64 ",\"conn_bytes\":%" PRIu64 ",\"words\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"connections\":%" PRIu64
              ",\"reconnects\":%" PRIu64 ",\"reboots\":%" PRIu64 ",\"idle_ms\":%" PRIu64 ",\"first_error\":",
              s->open ? "true" : "false", s->bytes, s->conn_bytes, s->words, s->errors, s->connections, s->reconnects, s->reboots, idle_since(t, s->last_rx_ms));
    sb_str(&b, s->first_error);
    sb_printf(&b, ",\"close_reason\":");
    sb_str(&b, s->close_reason);
    sb_printf(&b, "}");
    tot_recv += s->bytes;
    tot_err += s->errors;
    tot_rc += s->reconnects;
  }
  pthread_mutex_unlock(&ins_lock);
  sb_printf(&b, "],\"bad_hellos\":%" PRIu64, U(in_bad_hellos));

  sb_printf(&b, ",\"mem\":{\"enabled\":%s,\"mib\":%" PRIu64 ",\"rate_mibps\":%" PRIu64 ",\"passes\":%" PRIu64 ",\"pages_touched\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"first_error\":",
            mem.enabled ? "true" : "false", mem.mib, mem.rate, U(mem.passes), U(mem.pages_touched), U(mem.errors));
  sb_str(&b, mem.first_error);
  sb_printf(&b, "}");

  pthread_mutex_lock(&dsk.lock);
  char de[160];
  snprintf(de, sizeof de, "%s", dsk.first_error);
  pthread_mutex_unlock(&dsk.lock);
  uint64_t derr = U(dsk.ahead) + U(dsk.behind) + U(dsk.corrupt) + U(dsk.write_errors);
  sb_printf(&b, ",\"disk\":{\"enabled\":%s,\"dev\":", dsk.enabled ? "true" : "false");
  sb_str(&b, dsk.dev);
  sb_printf(&b,
            ",\"direct\":%s,\"slots\":%" PRIu64 ",\"records\":%" PRIu64 ",\"start_record\":%" PRIu64 ",\"checks\":%" PRIu64 ",\"check_ok\":%" PRIu64
            ",\"last_check\":{\"mem\":%" PRIu64 ",\"disk\":%" PRIu64 "},\"ahead\":%" PRIu64 ",\"behind\":%" PRIu64 ",\"corrupt\":%" PRIu64
            ",\"write_errors\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"first_error\":",
            dsk.direct ? "true" : "false", dsk.slots, U(dsk.records), U(dsk.start_record), U(dsk.checks), U(dsk.check_ok), U(dsk.last_check_mem),
            U(dsk.last_check_disk), U(dsk.ahead), U(dsk.behind), U(dsk.corrupt), U(dsk.write_errors), derr);
  sb_str(&b, de);
  sb_printf(&b, "}");
  sb_printf(&b, ",\"totals\":{\"sent\":%" PRIu64 ",\"received\":%" PRIu64 ",\"stream_errors\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"errors\":%" PRIu64 "}}",
            tot_sent, tot_recv, tot_err, tot_rc, tot_err + U(mem.errors) + derr);
  return b.p;
}

static void *status_main(void *arg) {
  (void)arg;
  int lfd = listen_until_up(cfg.status_port, "status");
  for (;;) {
    int fd = accept_next(lfd);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char *js = status_json();
    size_t n = strlen(js);
    js[n] = 0;
    (void)write_all(fd, js, n);
    (void)write_all(fd, "\n", 1);
    free(js);
    shutdown(fd, SHUT_WR);
    close(fd);
  }
  return NULL;
}

/* ------------------------------------------------------------------ virtio-serial + reporter */

static int vport_fd = -1;
static pthread_mutex_t vport_lock = PTHREAD_MUTEX_INITIALIZER;

static int find_vport(char *dev, size_t n) {
  for (int a = 0; a < 8; a++)
    for (int b = 0; b < 32; b++) {
      char path[128], name[96] = "";
      snprintf(path, sizeof path, "/sys/class/virtio-ports/vport%dp%d/name", a, b);
      FILE *f = fopen(path, "r");
      if (!f) continue;
      if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
      fclose(f);
      if (!strcmp(name, cfg.vport_name)) {
        snprintf(dev, n, "/dev/vport%dp%d", a, b);
        return 0;
      }
    }
  return -1;
}

/* The whole line or nothing more of it once the host is gone: EAGAIN (the port's queue is
   full) waits up to 2 s for room; with no host on the other end the rest is dropped. */
static void vport_write_all(const char *p, size_t len) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(vport_fd, p + off, len - off);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      struct pollfd w = {vport_fd, POLLOUT, 0};
      if (poll(&w, 1, 2000) > 0 && !(w.revents & (POLLHUP | POLLERR))) continue;
    }
    return;
  }
}

static void vport_write_line(const char *prefix, const char *js) {
  pthread_mutex_lock(&vport_lock);
  if (vport_fd >= 0) {
    size_t pl = strlen(prefix), jl = strlen(js);
    char *line = malloc(pl + jl + 2);
    memcpy(line, prefix, pl);
    memcpy(line + pl, js, jl);
    line[pl + jl] = '\n';
    vport_write_all(line, pl + jl + 1);
    free(line);
  }
  pthread_mutex_unlock(&vport_lock);
}

/* ------------------------------------------------------------------ iperf3 over the port */

struct iperf_job {
  char id[33];
  char *argv[IPERF_MAX_ARGS + 3];
  int argc;
  char words[4096];
};

static pthread_mutex_t iperf_lock = PTHREAD_MUTEX_INITIALIZER;
static char iperf_seen[IPERF_SEEN][33];
static unsigned iperf_seen_next;

/* Has this id been started already? If not, remember it (the oldest of IPERF_SEEN forgotten). */
static int iperf_seen_before(const char *id) {
  pthread_mutex_lock(&iperf_lock);
  for (int i = 0; i < IPERF_SEEN; i++)
    if (!strcmp(iperf_seen[i], id)) {
      pthread_mutex_unlock(&iperf_lock);
      return 1;
    }
  snprintf(iperf_seen[iperf_seen_next++ % IPERF_SEEN], sizeof iperf_seen[0], "%s", id);
  pthread_mutex_unlock(&iperf_lock);
  return 0;
}

static int valid_id(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > 32) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '_' || id[i] == '-')) return 0;
  return 1;
}

static void iperf_answer(const char *id, const char *body) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "IPERF3 %s ", id);
  vport_write_line(prefix, body);
}

/* Run iperf3 with the job's arguments, its stdout (the -J document) collected; one line back. */
static void *iperf_main(void *arg) {
  struct iperf_job *j = arg;
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) < 0) {
    iperf_answer(j->id, "!pipe failed");
    free(j);
    return NULL;
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pfd[1], 1);
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) {
      dup2(nul, 0);
      dup2(nul, 2);
    }
    execv(IPERF_BIN, j->argv);
    _exit(127);
  }
  close(pfd[1]);
  if (pid < 0) {
    close(pfd[0]);
    iperf_answer(j->id, "!fork failed");
    free(j);
    return NULL;
  }
  size_t cap = 65536, len = 0;
  char *out = malloc(cap);
  uint64_t deadline = now_ms() + IPERF_MAX_S * 1000ull;
  int killed = 0;
  for (;;) {
    uint64_t t = now_ms();
    if (t >= deadline && !killed) {
      kill(pid, SIGKILL);
      killed = 1;
    }
    struct pollfd p = {pfd[0], POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) continue;
    if (len + 4096 > cap && cap < IPERF_MAX_OUT) out = realloc(out, cap *= 2);
    ssize_t n = read(pfd[0], out + len, cap - len - 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (len + 1 >= cap && cap >= IPERF_MAX_OUT) { /* runaway output: stop it */
      kill(pid, SIGKILL);
      killed = 1;
      break;
    }
  }
  close(pfd[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  out[len] = 0;
  /* -J output: newlines are only whitespace between tokens (strings escape theirs) */
  for (size_t i = 0; i < len; i++)
    if (out[i] == '\n' || out[i] == '\r') out[i] = ' ';
  char *start = out;
  while (*start == ' ' || *start == '\t') start++;
  if (killed) iperf_answer(j->id, "!iperf3 killed (ran too long or printed too much)");
  else if (*start != '{') {
    char msg[160];
    snprintf(msg, sizeof msg, "!iperf3 printed no JSON (exit status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    iperf_answer(j->id, msg);
  } else iperf_answer(j->id, start);
  free(out);
  free(j);
  return NULL;
}

/* "iperf3 ID ARG...": start it (once per ID) and acknowledge; false if the line is no such command. */
static int iperf_request(const char *line) {
  if (strncmp(line, "iperf3 ", 7) != 0) return 0;
  struct iperf_job *j = calloc(1, sizeof *j);
  snprintf(j->words, sizeof j->words, "%s", line + 7);
  char *save = NULL, *w = strtok_r(j->words, " \t\r", &save);
  if (!w || !valid_id(w)) {
    iperf_answer("-", "!bad request: iperf3 ID ARG... with ID [A-Za-z0-9_-]{1,32}");
    free(j);
    return 1;
  }
  snprintf(j->id, sizeof j->id, "%s", w);
  j->argv[j->argc++] = IPERF_BIN;
  int json = 0;
  while ((w = strtok_r(NULL, " \t\r", &save)) != NULL) {
    if (j->argc > IPERF_MAX_ARGS) {
      iperf_answer(j->id, "!too many arguments");
      free(j);
      return 1;
    }
    if (!strcmp(w, "-J") || !strcmp(w, "--json")) json = 1;
    j->argv[j->argc++] = w;
  }
  if (!json) j->argv[j->argc++] = "-J";
  j->argv[j->argc] = NULL;
  if (iperf_seen_before(j->id)) {
    free(j);
    return 1;
  }
  char prefix[64];
  snprintf(prefix, sizeof prefix, "IPERF3-START %s", j->id);
  vport_write_line(prefix, "");
  spawn_detached(iperf_main, j);
  return 1;
}

/* One line from the host: the iperf3 command, else a status request. */
static void vport_request(const char *line) {
  if (iperf_request(line)) return;
  char *js = status_json();
  vport_write_line("", js);
  free(js);
}

static void *vport_main(void *arg) {
  (void)arg;
  char dev[64];
  for (int tries = 0; find_vport(dev, sizeof dev) < 0; tries++) {
    if (tries == 20) return NULL; /* no such port: the guest was started without virtio-serial */
    sleep_ms(500);
  }
  int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    logmsg("open %s: %s", dev, strerror(errno));
    return NULL;
  }
  pthread_mutex_lock(&vport_lock);
  vport_fd = fd;
  pthread_mutex_unlock(&vport_lock);
  logmsg("status channel on %s (%s)", dev, cfg.vport_name);
  char buf[4096];
  size_t len = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, 1000);
    if (r <= 0) continue;
    if (p.revents & POLLHUP) { /* host side not connected */
      sleep_ms(200);
      continue;
    }
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n <= 0) {
      sleep_ms(100);
      continue;
    }
    len += (size_t)n;
    char *nl;
    while ((nl = memchr(buf, '\n', len)) != NULL) {
      *nl = 0;
      vport_request(buf);
      size_t used = (size_t)(nl - buf) + 1;
      memmove(buf, nl + 1, len - used);
      len -= used;
    }
    if (len == sizeof buf - 1) len = 0; /* a line longer than the buffer: dropped */
  }
  return NULL;
}

static void *reporter_main(void *arg) {
  (void)arg;
  for (;;) {
    sleep_ms(cfg.report_s * 1000);
    char *js = status_json();
    fprintf(stdout, "VNSTAT %s\n", js);
    fflush(stdout);
    vport_write_line("", js);
    free(js);
  }
  return NULL;
}

/* ------------------------------------------------------------------ modes */

static int mode_run(int argc, char **argv) {
  FILE *f = fopen("/proc/cmdline", "r");
  if (f) {
    char line[4096];
    if (fgets(line, sizeof line, f)) parse_words(line, 1);
    fclose(f);
  }
  for (int i = 0; i < argc; i++) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", argv[i]);
    parse_words(tmp, 0);
  }
  parse_peers();
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  start_ms = now_ms();
  if (getrandom(&boot_nonce, sizeof boot_nonce, GRND_NONBLOCK) != sizeof boot_nonce) boot_nonce = mix64(now_us() ^ (uint64_t)getpid());

  if (!strcmp(cfg.disk, "auto")) snprintf(cfg.disk, sizeof cfg.disk, "%s", access("/dev/vda", F_OK) == 0 ? "/dev/vda" : "none");
  dsk.enabled = strcmp(cfg.disk, "none") != 0;
  snprintf(dsk.dev, sizeof dsk.dev, "%s", dsk.enabled ? cfg.disk : "");
  mem.enabled = cfg.mem_mib > 0;
  mem.mib = cfg.mem_mib;
  mem.rate = cfg.memrate_mib;

  logmsg("version %s name=%s listen=%d status=%d peers=%d mem=%" PRIu64 "MiB@%" PRIu64 "MiB/s disk=%s@%" PRIu64 "/s", VNGUEST_VERSION, cfg.name, cfg.listen_port,
         cfg.status_port, cfg.npeers, cfg.mem_mib, cfg.memrate_mib, cfg.disk, cfg.diskrate);

  /* Every stream's record is complete before any thread starts: the status threads (TCP and the
     virtio-serial port, where a request the host sent before boot is already waiting) read them
     all at their first request. */
  for (int i = 0; i < cfg.npeers; i++) {
    outs[i].peer = &cfg.peers[i];
    outs[i].index = i;
    pthread_mutex_init(&outs[i].lock, NULL);
  }
  spawn_detached(status_main, NULL);
  spawn_detached(receiver_main, NULL);
  spawn_detached(vport_main, NULL);
  if (mem.enabled) spawn_detached(mem_main, NULL);
  if (dsk.enabled) spawn_detached(disk_main, NULL);
  for (int i = 0; i < cfg.npeers; i++) spawn_detached(sender_main, &outs[i]);
  fprintf(stdout, "VNGUEST-READY name=%s status=%d\n", cfg.name, cfg.status_port);
  fflush(stdout);
  reporter_main(NULL);
  return 0;
}

static int mode_query(int argc, char **argv) {
  if (argc < 1) {
    fprintf(stderr, "usage: vnguest query HOST:PORT [TIMEOUT_S]\n");
    return 2;
  }
  char host[128];
  snprintf(host, sizeof host, "%s", argv[0]);
  char *colon = strrchr(host, ':');
  int port = 7070;
  if (colon) {
    *colon = 0;
    port = atoi(colon + 1);
  }
  int timeout_s = argc > 1 ? atoi(argv[1]) : 5;
  struct sockaddr_in sa;
  if (resolve(host, port, &sa) < 0) {
    fprintf(stderr, "vnguest query: cannot resolve %s\n", host);
    return 1;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct timeval tv = {timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() too */
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "vnguest query: connect %s:%d: %s\n", host, port, strerror(errno));
    return 1;
  }
  char buf[65536];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (memchr(buf, '\n', len) || len == sizeof buf - 1) break;
  }
  close(fd);
  buf[len] = 0;
  char *nl = strchr(buf, '\n');
  if (!nl) {
    fprintf(stderr, "vnguest query: no complete line from %s:%d (%zu bytes)\n", host, port, len);
    return 1;
  }
  *nl = 0;
  printf("%s\n", buf);
  return 0;
}

static int mode_disk_scan(int argc, char **argv) {
  if (argc < 1) {
    fprintf(stderr, "usage: vnguest disk-scan FILE\n");
    return 2;
  }
  int direct;
  int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
  (void)direct;
  if (fd < 0) {
    fprintf(stderr, "vnguest disk-scan: %s: %s\n", argv[0], strerror(errno));
    return 1;
  }
  struct scan_result r;
  if (scan_disk(fd, &r) < 0) {
    fprintf(stderr, "vnguest disk-scan: read error\n");
    return 1;
  }
  printf("{\"slots\":%" PRIu64 ",\"last_record\":%" PRIu64 ",\"last_slot\":%" PRIu64 ",\"valid\":%" PRIu64 ",\"corrupt\":%" PRIu64 "}\n", r.slots, r.last_seq, r.last_slot,
         r.valid, r.corrupt);
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "run";
  if (!strcmp(mode, "run")) return mode_run(argc - 2 > 0 ? argc - 2 : 0, argv + 2);
  if (!strcmp(mode, "query")) return mode_query(argc - 2, argv + 2);
  if (!strcmp(mode, "disk-scan")) return mode_disk_scan(argc - 2, argv + 2);
  if (!strcmp(mode, "version")) {
    printf("vnguest %s\n", VNGUEST_VERSION);
    return 0;
  }
  fprintf(stderr, "usage: vnguest run [KEY=VALUE...] | query HOST:PORT [SECS] | disk-scan FILE | version\n");
  return 2;
}
