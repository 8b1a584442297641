/** Test and benchmark kit: a local origin, process spawning, loopback clusters. */
export * from './origin.js'
export * from './procs.js'
export * from './cluster.js'
export * from './wait.js'
export * from './containerd.js'
export * from './registry.js'
export * from './netns.js'
export * from './hub.js'
