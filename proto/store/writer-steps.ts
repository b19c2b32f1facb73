/**
 * The life of a content-addressed store's writer (cas-writer.ts, block-image-writer.ts): its
 * steps run one after another in call order, the first failure fails every later step, a commit
 * or an abort ends it, and its writer session hears once that it is over.
 *
 * Guarantees:
 *   - step(f) runs f after every step queued before it, whether those were awaited or not; once a
 *     step failed (or the sink's upload did: `failure`), every later step fails with that failure.
 *   - commitStep(f) refuses a writer that is not open (ERR_STATE), marks it committed, runs f as the
 *     last step, marks it aborted if that fails, and ends it (done() once) either way.
 *   - Failures keep their code with one line naming the artefact (wrap): ERR_STATE and
 *     ERR_FAILED_PRECONDITION pass unchanged, ERR_STORE_FULL says no index was written.
 */
import { isVnsnapError, VnsnapError } from '../core/errors';

export type Doing = 'writing' | 'committing';

export abstract class WriterSteps {
  protected state: 'open' | 'committed' | 'aborted' = 'open';
  /** The last queued step (errors swallowed: each caller sees its own step's). */
  protected chain: Promise<unknown> = Promise.resolve();
  /** The first failure; every later step fails with it. */
  protected failure: unknown;
  private finished = false;

  constructor(
    readonly path: string,
    /** The backend's description (for messages), and what to call once the writer is over. */
    private readonly life: { describe: string; done?: () => Promise<void> },
  ) {}

  /** Run `f` after every step queued before it; the first failure fails every later step. */
  protected step<T>(f: () => Promise<T>, doing: Doing): Promise<T> {
    const p = this.chain.then(async () => {
      if (this.failure !== undefined) throw this.failure;
      try {
        return await f();
      } catch (e) {
        this.failure ??= this.wrap(e, doing);
        throw this.failure;
      }
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** The commit: `f` as the last step of an open writer, which is over after it (module comment). */
  protected commitStep<T>(f: () => Promise<T>): Promise<T> {
    if (this.state !== 'open') return Promise.reject(this.ended());
    this.state = 'committed';
    return this.step(f, 'committing')
      .catch((e: unknown) => {
        this.state = 'aborted';
        throw e;
      })
      .finally(() => this.finish());
  }

  /** Tell the session this writer is over (once). */
  protected async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.life.done?.();
  }

  protected ended(): VnsnapError {
    return new VnsnapError('ERR_STATE', `artefact ${this.path} is already ${this.state}`);
  }

  /** A backend failure as one line naming the artefact, keeping its code. */
  protected wrap(e: unknown, doing: Doing): unknown {
    if (isVnsnapError(e, 'ERR_STATE') || isVnsnapError(e, 'ERR_FAILED_PRECONDITION')) return e;
    if (isVnsnapError(e, 'ERR_STORE_FULL')) {
      return new VnsnapError('ERR_STORE_FULL', `store is full while ${doing} ${this.path}; no index was written (chunks already stored are left for garbage collection)`, { cause: e });
    }
    const code = isVnsnapError(e) ? e.code : 'ERR_INTERNAL';
    return new VnsnapError(code, `store ${this.life.describe} failed while ${doing} ${this.path}: ${(e as Error).message}`, { cause: e });
  }
}
