/*
 * addon: the per-environment state of the vnsnap_io addon, and the N-API entry points each
 * file of switch/native/ contributes (addon.c registers them all).
 *
 * Why per environment: Node may load this addon in several environments of one process (the
 * main thread and worker threads; a benchmark floods UDP from a worker while the main thread
 * receives). Every piece of mutable state lives in one addon_t that napi_set_instance_data
 * attaches to its environment, so two threads never share a send arena, a read scratch
 * buffer, a poller list or a socket table. Nothing in the addon is process-global except
 * constants. Each environment is single-threaded, so nothing here needs a lock.
 *
 * Lifetime: created by the module's init in each environment, freed when that environment is
 * torn down (after the pollers' own finalizers, which unlink them from the list).
 */
#ifndef VNSNAP_ADDON_H
#define VNSNAP_ADDON_H

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

struct poller;
struct udp_sock;
struct send_arena;

/*
 * The version of the addon's interface to switch/native-io.ts (exported as `interfaceVersion`).
 * Bump it, and NATIVE_INTERFACE_VERSION there, whenever an entry point, an option or a result
 * changes meaning: a checkout whose TypeScript was rebuilt but whose addon was not (npm run build
 * alone) is then refused at load with one line instead of misreading frames.
 * 2: packetOpen's vnetHdr option (PACKET_VNET_HDR).
 * 3: packetOpen's writeOnly option, writeFramesVnet's splitFlushTail option.
 * 4: writeFrames/writeFramesVnet skip a frame the kernel refuses on its own (EMSGSIZE, EINVAL,
 *    ENOMEM, EFAULT) and go on, counting it in opts.refused[0] (writeFrames' new opts argument).
 * 5: bpfObjGet, bpfMapUpdate, bpfMapLookup, bpfMapDelete, bpfProgTestRun (the in-kernel data path).
 * 6: zstdCompress, zstdDecompress, cdcCuts (the snapshot store: proto/store/store-native.ts).
 * 7: setThreadPolicy (a thread's scheduling policy: the QEMU driver's pause boost).
 * 8: the RAM write tracking of ram_track.c.
 * 9: readProcessBlocks, sha256Blocks (a tracked round's read and its blocks' SHA-256s in the thread
 *    pool: ram_read.c).
 * 10: readProcessBlocks' opts.ownThread (a thread of its own, not the pool) and opts.timing.
 * 11: unixSinkListen, unixSinkClose (one connection's bytes read on a thread of its own: a tracked
 *     capture's device state, unix_sink.c).
 */
#define VNSNAP_IO_INTERFACE_VERSION 11

/* Bytes of the spill tail of TAP reads (see poller_read.c). */
#define RX_SCRATCH_BYTES (128 * 1024)

typedef struct addon {
  struct poller *pollers;   /* every live poller, so close(fd) can stop the ones on fd */
  struct udp_sock **socks;  /* per-socket UDP state, slot = fd (see udp_sock.h) */
  size_t nsocks;            /* slots in socks */
  struct send_arena *arena; /* scratch of udpSend/gsoSegment/groSplit, allocated on first use */
  uint8_t *rx_scratch;      /* RX_SCRATCH_BYTES, allocated with the first poller */
} addon_t;

/* This environment's state (never NULL once the module is initialised). */
addon_t *addon_get(napi_env env);
/* This environment's send arena, allocated on first use; NULL after throwing ENOMEM. */
struct send_arena *addon_arena(napi_env env, const char *op);

/* The entry points, grouped by the file that defines them: X(jsName, CName). */
#define VNSNAP_ENTRY_POINTS(X)                                                                  \
  X(close, Close)                                                       /* addon.c */         \
  X(tapOpen, TapOpen)                                                   /* tap.c */           \
  X(packetOpen, PacketOpen)                                             /* packet.c */        \
  X(writeFrames, WriteFrames) X(writeFramesVnet, WriteFramesVnet)       /* frame_write.c */   \
  X(udpOpen, UdpOpen) X(udpSocketStats, UdpSocketStats) X(udpSetNoCheck, UdpSetNoCheck) /* udp_sock.c */ \
  X(udpSend, UdpSend)                                                   /* udp_send.c */      \
  X(gsoSegment, GsoSegment) X(groSplit, GroSplit)                       /* offload_napi.c */  \
  X(createPoller, CreatePoller)                                         /* poller.c */        \
  X(bpfObjGet, BpfObjGet) X(bpfMapUpdate, BpfMapUpdate) X(bpfMapLookup, BpfMapLookup)            \
  X(bpfMapDelete, BpfMapDelete) X(bpfProgTestRun, BpfProgTestRun)       /* bpf.c */           \
  X(zstdCompress, ZstdCompress) X(zstdDecompress, ZstdDecompress)                               \
  X(zstdPack, ZstdPack)                                                 /* zstd.c */          \
  X(cdcCuts, CdcCuts)                                                   /* cdc.c */           \
  X(sha256x2Available, Sha256x2Available) X(sha256Reset, Sha256Reset)                          \
  X(sha256Pair, Sha256Pair) X(sha256Final, Sha256Final)                 /* sha256x2.c */       \
  X(copyBytes, CopyBytes) X(keepFromChildren, KeepFromChildren)        /* bytes.c */          \
  X(setThreadPolicy, SetThreadPolicy)                                   /* sched.c */          \
  X(uffdWriteTrackingAvailable, UffdWriteTrackingAvailable) X(uffdAdopt, UffdAdopt)              \
  X(uffdTrackWrites, UffdTrackWrites) X(pagemapScanWritten, PagemapScanWritten)                  \
  X(readProcessMemory, ReadProcessMemory) X(writeProcessMemory, WriteProcessMemory) /* ram_track.c */ \
  X(readProcessBlocks, ReadProcessBlocks) X(sha256Blocks, Sha256Blocks) /* ram_read.c */      \
  X(unixSinkListen, UnixSinkListen) X(unixSinkClose, UnixSinkClose)     /* unix_sink.c */

#define VNSNAP_DECLARE_ENTRY(js, c) napi_value c(napi_env env, napi_callback_info info);
VNSNAP_ENTRY_POINTS(VNSNAP_DECLARE_ENTRY)

/* sched.c: a detached thread at SCHED_FIFO `fifo` where permitted, else at the creator's policy; 1 when made. */
int vn_thread_start(void *(*fn)(void *), void *arg, int fifo, size_t stack_bytes);

/* close(fd)'s duties towards the other files, run before the fd is closed. */
void poller_fd_closing(addon_t *a, int fd); /* poller.c: stop the pollers on fd */
void udp_sock_forget(addon_t *a, int fd);   /* udp_sock.c: drop the socket state at fd */

#endif
