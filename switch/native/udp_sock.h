/*
 * udp_sock: what the addon remembers about one UDP socket (today: whether the kernel refused
 * UDP_SEGMENT on it, and how many messages went out each way).
 *
 * Why an object per socket, not a flag per fd number: fd numbers are reused. A flag kept per
 * number and never cleared would make the next socket opened on that number inherit the slow
 * path (one datagram per segment) of a socket it has nothing to do with. So:
 * - the state is created when udpOpen opens the socket and destroyed when the addon's close()
 *   closes it;
 * - it records the socket's identity (st_dev/st_ino of the fd, unique among open files) and
 *   udp_sock_of() checks it on every use (one fstat per udpSend call, i.e. per batch, beside
 *   its sendmmsg): a socket closed behind the addon's back (fs.closeSync) whose number another
 *   file took gets fresh state, never the old one;
 * - it lives in this environment's addon_t (a worker has its own table).
 * The JS API still names sockets by fd; the table below maps fd -> the state of the socket that
 * fd names now.
 */
#ifndef VNSNAP_UDP_SOCK_H
#define VNSNAP_UDP_SOCK_H

#include <sys/types.h>

#include "addon.h"

typedef struct udp_sock {
  int fd;
  dev_t dev; /* identity of the open file this state describes */
  ino_t ino;
  int gso_broken;    /* the kernel refused a UDP_SEGMENT send: segments go one datagram each */
  double gso_msgs;   /* UDP_SEGMENT messages the kernel accepted */
  double split_msgs; /* UDP_SEGMENT messages refused and sent one datagram per segment */
} udp_sock_t;

/* The state of the socket fd names now: found, or created fresh when fd has none or names
 * another open file than the one recorded. NULL when fd is not open (or out of memory):
 * the caller then behaves as for a fresh socket and keeps no counts. */
udp_sock_t *udp_sock_of(addon_t *a, int fd);

#endif
