{
  "targets": [
    {
      "target_name": "vnsnap_io",
      "sources": [
        "switch/native/addon.c",
        "switch/native/napi_util.c",
        "switch/native/tap.c",
        "switch/native/packet.c",
        "switch/native/frame_write.c",
        "switch/native/udp_sock.c",
        "switch/native/udp_send.c",
        "switch/native/offload.c",
        "switch/native/offload_napi.c",
        "switch/native/poller.c",
        "switch/native/poller_read.c",
        "switch/native/bpf.c",
        "switch/native/zstd.c",
        "switch/native/cdc.c",
        "switch/native/sha256x2.c",
        "switch/native/bytes.c",
        "switch/native/sched.c",
        "switch/native/ram_track.c",
        "switch/native/ram_read.c",
        "switch/native/unix_sink.c",
        "switch/native/sha256_portable.c"
      ],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8"],
      "libraries": ["-lzstd"]
    },
    {
      "target_name": "vnsnap-xen-relay",
      "type": "executable",
      "sources": ["agent/native/xen-relay.c"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    },
    {
      "target_name": "vnsnap-uffd-preload",
      "type": "shared_library",
      "sources": ["agent/native/uffd-preload.c"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-fPIC"]
    },
    {
      "target_name": "vnsnap-thp-collapse",
      "type": "executable",
      "sources": ["agent/native/thp-collapse.c"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    }
  ]
}
