/*
 * send_arena: the scratch memory of one udpSend call (and of gsoSegment/groSplit, which never
 * run during one): segment headers, iovecs, the mmsghdr batch with its UDP_SEGMENT control
 * messages, and the bookkeeping that maps each message back to the entry it came from.
 *
 * Why an arena: a send batch holds up to ARENA_MSGS messages and ARENA_SEGS segments; building
 * them in place avoids a malloc per call on the hot path. Why per environment: each
 * environment (main thread, each worker) gets its own, allocated on first use by
 * addon_arena(), so a worker sending at the same time as the main thread never shares one.
 * Contents are valid only during one call.
 */
#ifndef VNSNAP_SEND_ARENA_H
#define VNSNAP_SEND_ARENA_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "offload.h"

#define ARENA_SEGS 1024
#define ARENA_MSGS 512
#define IOV_CAP (ARENA_SEGS * 2 + ARENA_MSGS)
/* Entries one groSplit call may return. */
#define GRO_SPLIT_MAX 4096

typedef struct send_arena {
  uint8_t hdr[ARENA_SEGS * OFL_SEG_HDR_MAX];
  ofl_seg_t segs[ARENA_SEGS];
  struct iovec iov[IOV_CAP];
  struct mmsghdr msgs[ARENA_MSGS];
  struct sockaddr_in sa[ARENA_MSGS];
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctl[ARENA_MSGS];
  uint32_t msg_entry[ARENA_MSGS], msg_nseg[ARENA_MSGS];
  /* run: the message carries consecutive ordinary entries (segment j = entry msg_entry + j),
   * one iovec each; otherwise the segments of one super-frame, two iovecs each. */
  uint8_t msg_run[ARENA_MSGS];
  uint32_t msg_seg_size[ARENA_MSGS], msg_bytes[ARENA_MSGS], msg_last[ARENA_MSGS];
  ofl_entry_t ents[GRO_SPLIT_MAX];
} send_arena_t;

#endif
