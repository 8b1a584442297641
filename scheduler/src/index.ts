/**
 * @packageDocumentation
 *
 * The scheduler: soft state of hosts, tasks, peers and pieces (`resource/`), parent selection with
 * filters and a cycle check (`scheduling/`), pure scoring (`evaluator/`).
 *
 * ```ts
 * const node = await createNode({ listen: ['/ip4/0.0.0.0/tcp/65003'] })
 * const scheduler = new Scheduler({ node, log }); await scheduler.start()
 * ```
 */
export { Scheduler, SchedulerCore, helloProblem, layoutProblem, registerProblem, type ConnectOptions, type SchedulerInit, type SchedulerStats } from './scheduler.js'
export * from './constants.js'
export { evaluate, locationAffinity } from './evaluator/index.js'
export { selectParents, reaches, mayReach, refuseReason } from './scheduling/index.js'
export { Forest, type StripeSlot } from './scheduling/forest.js'
export { Host, Peer, Task } from './resource/index.js'
