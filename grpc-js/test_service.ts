/**
 * A plain grpc-js service for the interceptor's tests: `inventory.v1.Inventory` with a unary `Reserve` and a
 * server-streaming `Watch`, whose messages are raw bytes (identity serializers). A request is JSON that says
 * what the handler does (answer with N bytes, fail with a code, throw, wait, stream N messages), so every
 * call's expected outcome and sizes are known to the client. A request whose first byte is 0xff cannot be
 * deserialized (grpc-js then answers INTERNAL on its own, past every interceptor).
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";

export const RESERVE = "/inventory.v1.Inventory/Reserve";
export const WATCH = "/inventory.v1.Inventory/Watch";
export const UNDECODABLE = 0xff;

/** What one request asks of the handler. */
export interface Instruction {
  /** Unique per call: the test matches calls, handlers and rows by it. */
  id: string;
  /** Bytes of the (each) response message. */
  reply?: number;
  /** Fail with this code (after `messages` messages for Watch). */
  code?: number;
  details?: string;
  /** Throw from the handler (unary: grpc-js answers UNKNOWN). */
  throws?: boolean;
  /** Wait this long before answering. */
  delayMs?: number;
  /** Watch: messages to send. */
  messages?: number;
  /** Makes the request as large as wanted (ignored by the handler). */
  pad?: string;
}

const identity = (value: Buffer) => value;
const deserialize = (bytes: Buffer) => {
  if (bytes[0] === UNDECODABLE) throw new Error("not an inventory request");
  return bytes;
};

export const INVENTORY_SERVICE: grpc.ServiceDefinition = {
  reserve: {
    path: RESERVE,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: deserialize,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
  watch: {
    path: WATCH,
    requestStream: false,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: deserialize,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

/** The request bytes of an instruction. */
export const requestOf = (instruction: Instruction): Buffer => Buffer.from(JSON.stringify(instruction));

/**
 * The handlers. `onCall(id, metadata)` sees each call's request metadata as the handler does (to ask the
 * interceptor for downstream metadata, say).
 */
export function inventoryHandlers(
  onCall: (id: string, metadata: grpc.Metadata) => void = () => {},
): grpc.UntypedServiceImplementation {
  const read = (request: Buffer): Instruction => JSON.parse(request.toString());
  return {
    reserve(call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
      const instruction = read(call.request);
      onCall(instruction.id, call.metadata);
      if (instruction.throws) throw new Error(`thrown for ${instruction.id}`);
      const answer = () => {
        if (instruction.code) {
          callback({ code: instruction.code, details: instruction.details ?? `failed ${instruction.id}` });
        } else {
          callback(null, Buffer.alloc(instruction.reply ?? 0, 7));
        }
      };
      if (instruction.delayMs) setTimeout(answer, instruction.delayMs);
      else answer();
    },
    watch(call: grpc.ServerWritableStream<Buffer, Buffer>) {
      const instruction = read(call.request);
      onCall(instruction.id, call.metadata);
      const run = () => {
        for (let i = 0; i < (instruction.messages ?? 0); i++) {
          call.write(Buffer.alloc(instruction.reply ?? 0, i));
        }
        if (instruction.code) {
          call.emit("error", {
            code: instruction.code,
            details: instruction.details ?? `failed ${instruction.id}`,
          });
        } else {
          call.end();
        }
      };
      if (instruction.delayMs) setTimeout(run, instruction.delayMs);
      else run();
    },
  };
}

/** Starts a grpc-js server on a free loopback port. */
export async function startInventoryServer(
  options: grpc.ServerOptions,
  onCall?: (id: string, metadata: grpc.Metadata) => void,
): Promise<{ server: grpc.Server; address: string } & AsyncDisposable> {
  const server = new grpc.Server(options);
  server.addService(INVENTORY_SERVICE, inventoryHandlers(onCall));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      grpc.ServerCredentials.createInsecure(),
      (error, bound) => error ? reject(error) : resolve(bound),
    )
  );
  return {
    server,
    address: `127.0.0.1:${port}`,
    [Symbol.asyncDispose]: () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

/** How a call went, as the client saw it. */
export interface ClientOutcome {
  code: number;
  details: string;
  /** Response bytes received (all messages). */
  responseBytes: number;
  /** Wall clock at the call's start and end (ms), and the monotonic duration the client measured (µs). */
  startMs: number;
  endMs: number;
  clientUs: number;
}

export interface CallSettings {
  metadata?: grpc.Metadata;
  /** A deadline this many ms after the call starts. */
  deadlineMs?: number;
  /** Cancel the call this many ms after it starts. */
  cancelAfterMs?: number;
  /** Cancel the call once this resolves (e.g. once the handler has it). */
  cancelWhen?: Promise<unknown>;
}

/** Calls Reserve (or Watch with `stream`) with `request` bytes; resolves with the outcome, never rejects. */
export function callInventory(
  client: grpc.Client,
  method: typeof RESERVE | typeof WATCH,
  request: Buffer,
  settings: CallSettings = {},
): Promise<ClientOutcome> {
  const startMs = Date.now();
  const startMono = performance.now();
  const options: grpc.CallOptions = settings.deadlineMs === undefined
    ? {}
    : { deadline: Date.now() + settings.deadlineMs };
  const metadata = settings.metadata ?? new grpc.Metadata();
  return new Promise((resolve) => {
    let responseBytes = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = (status: { code: number; details: string }) => {
      const clientUs = (performance.now() - startMono) * 1000;
      const endMs = Date.now();
      clearTimeout(timer);
      // Messages still buffered in the stream are delivered before a timer fires.
      setTimeout(() => resolve({ ...status, responseBytes, startMs, endMs, clientUs }), 0);
    };
    let call: grpc.ClientUnaryCall | grpc.ClientReadableStream<Buffer>;
    if (method === RESERVE) {
      call = client.makeUnaryRequest(
        method,
        identity,
        identity,
        request,
        metadata,
        options,
        (error, value) => {
          responseBytes += value?.length ?? 0;
          done(error ? { code: error.code, details: error.details } : { code: 0, details: "" });
        },
      );
    } else {
      const stream = client.makeServerStreamRequest(method, identity, identity, request, metadata, options);
      stream.on("data", (message: Buffer) => responseBytes += message.length);
      stream.on("error", () => {}); // the status says it
      stream.on(
        "status",
        (status: grpc.StatusObject) => done({ code: status.code, details: status.details }),
      );
      call = stream;
    }
    if (settings.cancelAfterMs !== undefined) timer = setTimeout(() => call.cancel(), settings.cancelAfterMs);
    settings.cancelWhen?.then(() => call.cancel());
  });
}
