/*
 * sockopt: the socket options the addon sets, in one place: the buffer size every socket it
 * opens gets (packet and UDP), and the UDP offload constants older libc headers lack.
 *
 * Buffers: 4 MiB each way, so a burst of a batch's worth of frames is queued, not dropped. As
 * root the FORCE variants ignore net.core.{r,w}mem_max; otherwise the capped size is taken.
 */
#ifndef VNSNAP_SOCKOPT_H
#define VNSNAP_SOCKOPT_H

#include <sys/socket.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define SOCK_BUF_BYTES (4 * 1024 * 1024)

static inline void set_sock_bufs(int fd) {
  int bytes = SOCK_BUF_BYTES;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

#endif
