/**
 * Coalesces the HTTP/2 frames a session writes within one turn of the event loop into one socket write.
 *
 * Why: Deno's node:http2 sends every frame with its own send() system call, and a unary gRPC call is three
 * frames each way (HEADERS, DATA, trailers). On loopback a send() also runs the receiver's TCP path, so
 * those calls were a quarter of a service's CPU. Corking the session's socket when a response (server) or a
 * request (client) starts, and uncorking it once the current turn's callbacks ran (setImmediate), turns them
 * into one write per turn for all the streams of the session. It delays nothing beyond the current turn.
 *
 * grpc-js creates its HTTP/2 servers and sessions itself, so this wraps node:http2's createServer and
 * connect once per process, before any server or client exists.
 */
import http2 from "node:http2";

interface Corkable {
  cork(): void;
  uncork(): void;
}

let installed = false;

function corkForThisTurn(socket: Corkable | undefined): void {
  if (!socket) return;
  socket.cork();
  setImmediate(() => socket.uncork());
}

type Respond = (this: http2.ServerHttp2Stream, ...args: unknown[]) => void;
type Request = (this: http2.ClientHttp2Session, ...args: unknown[]) => http2.ClientHttp2Stream;

export function installHttp2WriteBatching(): void {
  if (installed) return;
  installed = true;
  const patchedStreamPrototypes = new WeakSet<object>();
  const createServer = http2.createServer;
  // deno-lint-ignore no-explicit-any -- createServer's overloads; the arguments are passed through unchanged
  (http2 as any).createServer = function (...args: any[]) {
    const server = createServer.apply(http2, args as Parameters<typeof createServer>);
    server.prependListener("stream", (stream: http2.ServerHttp2Stream) => {
      const prototype = Object.getPrototypeOf(stream);
      if (patchedStreamPrototypes.has(prototype)) return;
      patchedStreamPrototypes.add(prototype);
      const respond = prototype.respond as Respond;
      prototype.respond = function (this: http2.ServerHttp2Stream, ...respondArgs: unknown[]) {
        corkForThisTurn(this.session?.socket as unknown as Corkable | undefined);
        return respond.apply(this, respondArgs);
      };
    });
    return server;
  };
  const connect = http2.connect;
  // deno-lint-ignore no-explicit-any -- connect's overloads; the arguments are passed through unchanged
  (http2 as any).connect = function (...args: any[]) {
    const session = connect.apply(http2, args as Parameters<typeof connect>);
    const request = session.request as unknown as Request;
    session.request = function (this: http2.ClientHttp2Session, ...requestArgs: unknown[]) {
      corkForThisTurn(this.socket as unknown as Corkable | undefined);
      return request.apply(this, requestArgs);
    } as typeof session.request;
    return session;
  };
}
