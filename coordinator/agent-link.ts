/**
 * What the sequencers need from the agents: send one command to one agent and get its Result.
 * The AgentRegistry implements it over the gRPC sessions; unit tests implement it with scripted
 * fake agents.
 *
 * `send` writes the command before it returns (so commands sent in one loop leave in the same
 * event-loop turn: the commit skew is the network's, not ours). Its promise resolves with the
 * agent's Result whatever `ok` says (`expectOk` turns a failed Result into a VnsnapError), and
 * rejects with ERR_AGENT_DISCONNECTED when the agent is not connected or its session ends
 * before the Result, ERR_TIMEOUT after `timeoutMs`, ERR_CANCELLED when `signal` aborts.
 */
import { isErrorCode, VnsnapError, type ErrorCode } from '../proto/core/errors';
import type { Command } from '../proto/gen/vnsnap/v1/Command';
import type { Result__Output } from '../proto/gen/vnsnap/v1/Result';
import type { VmProgress__Output } from '../proto/gen/vnsnap/v1/VmProgress';

/** A Command without its id (the registry numbers commands). Exactly one body field is set. */
export type CommandBody = Omit<Command, 'id' | 'body'>;

export interface SendOptions {
  onProgress?: (p: VmProgress__Output) => void;
  /** Fail with ERR_TIMEOUT if no Result within this (0 or absent: the link's default). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface AgentLink {
  send(agentId: string, body: CommandBody, opts?: SendOptions): Promise<Result__Output>;
  isConnected(agentId: string): boolean;
  /**
   * The tunnel endpoint the agent registered (for its peers' ConfigureVne), with its in-kernel
   * data path port when it registered one with this coordinator (absent: none, or not known).
   */
  endpoint(agentId: string): { address: string; port: number; dataPathPort?: number } | undefined;
}

/** The name of a command body, for messages ("SnapshotCommit"). */
export function commandName(body: CommandBody): string {
  const k = Object.keys(body).find((key) => (body as Record<string, unknown>)[key] != null) ?? 'command';
  return k.charAt(0).toUpperCase() + k.slice(1);
}

/** A failed Result → the typed error the agent reported (its code when it is one of ours). */
export function resultError(agentId: string, body: CommandBody, r: Result__Output): VnsnapError {
  const code: ErrorCode = isErrorCode(r.errorCode) ? r.errorCode : 'ERR_INTERNAL';
  return new VnsnapError(code, `agent ${agentId}: ${commandName(body)} failed: ${r.errorMessage || r.errorCode || 'no reason given'}`);
}

/** Send and insist on ok. */
export async function sendOk(link: AgentLink, agentId: string, body: CommandBody, opts?: SendOptions): Promise<Result__Output> {
  const r = await link.send(agentId, body, opts);
  if (!r.ok) throw resultError(agentId, body, r);
  return r;
}
