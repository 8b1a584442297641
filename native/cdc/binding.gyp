{
  "targets": [
    {
      "target_name": "guoce_cdc",
      "sources": [ "src/cdc.c" ],
      "cflags": [ "-Wall", "-Wextra", "-O3" ],
      "defines": [ "NAPI_VERSION=8" ]
    }
  ]
}
