#!/usr/bin/env node
import { main } from './main.js'

main(process.argv.slice(2)).then(code => { if (code != null) process.exitCode = code }, (err: Error) => {
  process.stderr.write(`guoce: error: ${err.message}\n`)
  // a service that failed half-way through its start (API address in use...) may hold sockets and
  // timers open: exit rather than hang (stderr is synchronous on pipes, files and TTYs)
  process.exit(1)
})
