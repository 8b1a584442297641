{
  "targets": [
    {
      "target_name": "guoce_mount",
      "sources": [ "src/mount.c" ],
      "cflags": [ "-Wall", "-Wextra", "-O2" ],
      "defines": [ "NAPI_VERSION=8", "_GNU_SOURCE" ]
    }
  ]
}
