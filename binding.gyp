{
  "targets": [
    {
      "target_name": "vnsnap_io",
      "sources": ["switch/native/vnsnap_io.c", "switch/native/offload.c"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "vnsnap-xen-relay",
      "type": "executable",
      "sources": ["agent/native/xen-relay.c"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    }
  ]
}
