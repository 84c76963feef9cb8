/**
 * The event sink's stream check: before publishing, on each connection and after JetStream refused a
 * message, the sink asks for the stream's configuration (`$JS.API.STREAM.INFO.<stream>`) on its own
 * connection and publishes only once the stream exists and fits.
 */
import {
  REQUEST_EVENTS_STREAM,
  type RequestEventsStreamNeeds,
  requestEventsStreamProblems,
  type StreamConfigLike,
} from "@tailwatch/events";
import type { Logger } from "@tailwatch/runtime";
import type { WireMessage } from "./protocol.ts";
import type { NatsWire } from "./wire.ts";

/** How long a stream check waits for its answer before it counts as failed (and is asked again). */
const CHECK_TIMEOUT_MS = 5_000;
/** JetStream's error code for "stream not found". */
const STREAM_NOT_FOUND = 10059;

const textDecoder = new TextDecoder();

/** What the check asks of the sink and tells it. */
export interface StreamCheckHooks {
  /** The sink is closed: no check is asked. */
  closed(): boolean;
  /** The server's latest refusal, if any: named when a check goes unanswered. */
  refusal(): string | undefined;
  /** Events pending, for the log. */
  pending(): number;
  /** A check found the stream there and fit: publishing may go on. */
  ready(): void;
}

/**
 * Asks `$JS.API.STREAM.INFO.REQUEST_EVENTS` on the sink's connection, answered on `<inbox>.s<serial>`.
 * Promises: at most one check awaits its answer, and only its answer counts (an earlier check's late answer
 * is ignored); an answer, or `CHECK_TIMEOUT_MS` without one, sets `ready` and `problem`; while the stream is
 * missing or unfit (or the check unanswered) it is asked again after 0.5 s, doubling up to 5 s; a problem is
 * logged when it changes, and at most once a minute while it stays.
 */
export class StreamCheck {
  /** True once the stream is known to exist and fit, on the server of the current connection. */
  ready = false;
  /** Why the stream is not ready (missing, unfit, no answer), once a check said so. */
  problem: string | undefined;
  readonly #wire: NatsWire;
  readonly #inbox: string;
  readonly #needs: RequestEventsStreamNeeds;
  readonly #logger: Logger;
  readonly #hooks: StreamCheckHooks;
  #serial = 0;
  /** The check awaiting its answer (its serial), or 0. */
  #awaited = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #failures = 0;
  #lastProblemLog = 0;
  readonly #again = () => this.request();

  constructor(
    wire: NatsWire,
    inbox: string,
    needs: RequestEventsStreamNeeds,
    logger: Logger,
    hooks: StreamCheckHooks,
  ) {
    this.#wire = wire;
    this.#inbox = inbox;
    this.#needs = needs;
    this.#logger = logger;
    this.#hooks = hooks;
  }

  /** Asks for the stream's configuration, unless closed, disconnected, or a check already awaits its answer. */
  request(): void {
    if (this.#hooks.closed() || !this.#wire.connected || this.#awaited !== 0) return;
    clearTimeout(this.#timer);
    const serial = ++this.#serial;
    this.#awaited = serial;
    this.#wire.writeText(
      `PUB $JS.API.STREAM.INFO.${REQUEST_EVENTS_STREAM} ${this.#inbox}.s${serial} 0\r\n\r\n`,
    );
    this.#timer = setTimeout(() => {
      if (this.#awaited !== serial) return;
      this.#awaited = 0;
      const refusal = this.#hooks.refusal();
      this.#checked([
        `no answer to the stream check within ${CHECK_TIMEOUT_MS / 1000} s` +
        (refusal !== undefined ? ` (the server refused: ${refusal})` : ""),
      ]);
    }, CHECK_TIMEOUT_MS);
  }

  /** Forgets the check awaited (its answer will be ignored) and the next one planned. */
  cancel(): void {
    this.#awaited = 0;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The answer to check `serial`: the StreamInfo JSON, a JetStream error, or a 503 status (no JetStream). */
  answer(message: WireMessage, serial: number): void {
    if (serial !== this.#awaited) return; // an earlier check's late answer
    this.cancel();
    const headers = textDecoder.decode(message.buf.subarray(message.payloadStart, message.headerEnd));
    const body = textDecoder.decode(message.buf.subarray(message.headerEnd, message.end));
    if (/^NATS\/1\.0 503/.test(headers)) {
      this.#checked(["JetStream did not answer the stream check (503 no responders: is JetStream enabled?)"]);
      return;
    }
    let answer: {
      config?: StreamConfigLike;
      error?: { code?: number; err_code?: number; description?: string };
    };
    try {
      answer = JSON.parse(body);
    } catch {
      this.#checked([`the stream check got an answer that is not JSON: ${body.slice(0, 200)}`]);
      return;
    }
    if (answer.error) {
      if (answer.error.err_code === STREAM_NOT_FOUND || answer.error.code === 404) {
        this.#checked(requestEventsStreamProblems(undefined, this.#needs));
      } else {
        this.#checked([
          `the stream check failed: ${answer.error.description ?? JSON.stringify(answer.error)}`,
        ]);
      }
      return;
    }
    this.#checked(requestEventsStreamProblems(answer.config ?? {}, this.#needs));
  }

  /** A check's verdict: ready (and the sink told), or the problem logged and the check asked again later. */
  #checked(problems: string[]): void {
    if (problems.length === 0) {
      if (this.problem !== undefined) this.#logger.info("events: the stream is there and fits; publishing");
      this.ready = true;
      this.problem = undefined;
      this.#failures = 0;
      this.#hooks.ready();
      return;
    }
    this.ready = false;
    const problem = problems.join("; ");
    const now = Date.now();
    if (problem !== this.problem || now - this.#lastProblemLog >= 60_000) {
      this.#lastProblemLog = now;
      this.#logger.error("events: waiting for the stream to be there and fit (events wait in the buffer)", {
        problem,
        pending: this.#hooks.pending(),
      });
    }
    this.problem = problem;
    const delay = Math.min(5_000, 500 * 2 ** Math.min(this.#failures++, 4));
    this.#timer = setTimeout(this.#again, delay);
  }
}
