/**
 * Fakes for the coordinator's unit tests: scripted agents behind the AgentLink interface, an
 * in-memory manifest store whose writes can be held or failed, and a helper to let promise
 * chains run.
 */
import { VnsnapError } from '../../proto/core/errors';
import type { Result__Output } from '../../proto/gen/vnsnap/v1/Result';
import type { VmProgress__Output } from '../../proto/gen/vnsnap/v1/VmProgress';
import { silentLogger } from '../../proto/core/log';
import { commandName, type AgentLink, type CommandBody, type SendOptions } from '../../coordinator/agent-link';
import type { ManifestStore } from '../../coordinator/manifest-store';

export const log = silentLogger();

/** Let every queued promise continuation and immediate run. */
export async function flush(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

export function ok(extra: Partial<Result__Output> = {}): Result__Output {
  return { commandId: 0, ok: true, errorCode: '', errorMessage: '', commandReceivedUnixUs: 0, sentUnixUs: 0, ...extra };
}

export function failed(code: string, message: string): Result__Output {
  return { commandId: 0, ok: false, errorCode: code, errorMessage: message, commandReceivedUnixUs: 0, sentUnixUs: 0 };
}

export interface Sent {
  agent: string;
  name: string;
  body: CommandBody;
  /** Commands sent in the same synchronous run share a turn number. */
  turn: number;
}

interface Held extends Sent {
  resolve: (r: Result__Output) => void;
  reject: (e: Error) => void;
  onProgress?: (p: VmProgress__Output) => void;
}

/** What a fake agent does with a command: answer now, hold it for the test, or fail the send. */
export type Behaviour = (agent: string, body: CommandBody) => Result__Output | 'hold' | Error;

export class FakeAgents implements AgentLink {
  readonly connected = new Set<string>();
  readonly sent: Sent[] = [];
  readonly held: Held[] = [];
  readonly behaviour = new Map<string, Behaviour>();
  private turn = 0;
  private turnOpen = false;

  constructor(agents: string[]) {
    for (const a of agents) this.connected.add(a);
  }

  isConnected(agentId: string): boolean {
    return this.connected.has(agentId);
  }

  connectedIds(): string[] {
    return [...this.connected].sort();
  }

  endpoint(agentId: string): { address: string; port: number } | undefined {
    return { address: `10.0.0.${agentId.replace(/\D/g, '') || '9'}`, port: 6081 };
  }

  /** Set what an agent (or every agent: '*') does with one command kind ('snapshotCommit'). */
  on(name: string, b: Behaviour | Result__Output | 'hold', agent = '*'): this {
    const prev = this.behaviour.get(name);
    const fn: Behaviour = typeof b === 'function' ? b : () => b;
    this.behaviour.set(name, agent === '*' ? fn : (a, body) => (a === agent ? fn(a, body) : prev ? prev(a, body) : defaultResult(a, body)));
    return this;
  }

  send(agentId: string, body: CommandBody, opts: SendOptions = {}): Promise<Result__Output> {
    if (!this.turnOpen) {
      this.turnOpen = true;
      queueMicrotask(() => {
        this.turn++;
        this.turnOpen = false;
      });
    }
    const name = Object.keys(body).find((k) => (body as Record<string, unknown>)[k] != null) as string;
    const rec: Sent = { agent: agentId, name, body, turn: this.turn };
    if (!this.connected.has(agentId)) return Promise.reject(new VnsnapError('ERR_AGENT_DISCONNECTED', `agent ${agentId} is not connected (${commandName(body)} not sent)`));
    this.sent.push(rec);
    const b = this.behaviour.get(name) ?? defaultResult;
    const r = b(agentId, body);
    if (r instanceof Error) return Promise.reject(r);
    if (r !== 'hold') return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const h: Held = { ...rec, resolve, reject, onProgress: opts.onProgress };
      this.held.push(h);
      opts.signal?.addEventListener('abort', () => {
        const i = this.held.indexOf(h);
        if (i >= 0) this.held.splice(i, 1);
        reject(new VnsnapError('ERR_CANCELLED', `${commandName(body)} to agent ${agentId} cancelled`));
      });
    });
  }

  private take(agent: string, name: string): Held {
    const i = this.held.findIndex((h) => h.agent === agent && h.name === name);
    if (i < 0) throw new Error(`no held ${name} for ${agent} (held: ${this.held.map((h) => `${h.agent}:${h.name}`).join(', ')})`);
    return this.held.splice(i, 1)[0] as Held;
  }

  /** Answer a held command. */
  reply(agent: string, name: string, r: Result__Output = defaultResult(agent, this.peek(agent, name).body) as Result__Output): void {
    this.take(agent, name).resolve(r);
  }

  peek(agent: string, name: string): Held {
    const h = this.held.find((x) => x.agent === agent && x.name === name);
    if (!h) throw new Error(`no held ${name} for ${agent}`);
    return h;
  }

  /** Progress for a held command. */
  progress(agent: string, name: string, p: Partial<VmProgress__Output>): void {
    this.peek(agent, name).onProgress?.({ vm: '', host: '', phase: 'PHASE_UNSPECIFIED', fraction: 0, bytesDone: 0, bytesTotal: 0, iteration: 0, dirtyRateMibS: 0, pauseMs: 0, phaseDone: false, ...p });
  }

  /** The agent's session ends: held commands fail with ERR_AGENT_DISCONNECTED. */
  disconnect(agent: string): void {
    this.connected.delete(agent);
    for (const h of this.held.filter((x) => x.agent === agent)) {
      this.held.splice(this.held.indexOf(h), 1);
      h.reject(new VnsnapError('ERR_AGENT_DISCONNECTED', `agent ${agent} disconnected during ${commandName(h.body)} (session ended by the agent)`));
    }
  }

  names(filter?: string): string[] {
    return this.sent.filter((s) => !filter || s.name === filter).map((s) => `${s.agent}:${s.name}`);
  }
}

/** Plausible successful results: every VM committed, a memory and a channel artefact each. */
export function defaultResult(agent: string, body: CommandBody): Result__Output {
  if (body.snapshotCommit) return ok({ payload: 'commit', commit: { vms: [] } });
  if (body.snapshotPersist) return ok({ payload: 'persist', persist: { artefacts: [], vms: [], lostFrames: 0 } });
  if (body.validateArtefacts) return ok({ payload: 'validate', validate: { problems: [] } });
  if (body.restorePrepare) return ok({ payload: 'restorePrepare', restorePrepare: { vms: [], beside: !!body.restorePrepare.loadBeside, besideRefused: '' } });
  if (body.restoreResume) return ok({ payload: 'resume', resume: { vms: [], injectedFrames: 0, diskPaths: {} } });
  void agent;
  return ok();
}

export class MemoryManifestStore implements ManifestStore {
  readonly files = new Map<string, Buffer>();
  hold = false;
  failWith?: Error;
  private heldWrites: (() => void)[] = [];
  writes = 0;

  async write(relPath: string, bytes: Uint8Array): Promise<void> {
    this.writes++;
    if (this.failWith) throw this.failWith;
    if (this.hold) await new Promise<void>((r) => this.heldWrites.push(r));
    this.files.set(relPath, Buffer.from(bytes));
  }

  release(): void {
    const w = this.heldWrites;
    this.heldWrites = [];
    for (const r of w) r();
  }

  async read(relPath: string): Promise<Buffer> {
    const b = this.files.get(relPath);
    if (!b) throw new VnsnapError('ERR_NOT_FOUND', `manifest ${relPath} does not exist in the store`);
    return b;
  }

  async remove(relPath: string): Promise<void> {
    this.files.delete(relPath);
  }
}
