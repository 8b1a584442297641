{
  "targets": [
    {
      "target_name": "guoce_gcm",
      "sources": [ "src/gcm.c" ],
      "cflags": [ "-Wall", "-Wextra", "-O2" ],
      "defines": [ "NAPI_VERSION=8" ]
    }
  ]
}
