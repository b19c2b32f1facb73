/**
 * The lifecycle every long-lived component follows (js-libp2p's Startable).
 *
 * Components are started in the order given and stopped in reverse, by one helper, so that a
 * failure half-way through start stops what had already started and nothing is left running.
 */

export interface Startable {
  start(): Promise<void> | void;
  stop(): Promise<void> | void;
}

/**
 * Start components in order; if one fails, stop the ones already started (reverse order) and
 * rethrow that start failure: it is the error the caller reports, even when a stop during the
 * roll-back fails too.
 */
export async function startAll(components: readonly Startable[]): Promise<void> {
  const started: Startable[] = [];
  try {
    for (const c of components) {
      await c.start();
      started.push(c);
    }
  } catch (e) {
    await stopAll(started).catch(() => undefined);
    throw e;
  }
}

/** Stop components in reverse order; every component is asked to stop even if an earlier one throws. */
export async function stopAll(components: readonly Startable[]): Promise<void> {
  let first: unknown;
  for (const c of [...components].reverse()) {
    try {
      await c.stop();
    } catch (e) {
      first ??= e;
    }
  }
  if (first !== undefined) throw first;
}
