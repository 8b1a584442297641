#!/usr/bin/env node
import { main } from './main.js'

main(process.argv.slice(2)).then(code => { if (code != null) process.exitCode = code }, (err: Error) => {
  process.stderr.write(`guoce: error: ${err.message}\n`)
  process.exitCode = 1
})
