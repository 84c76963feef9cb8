/**
 * The islands' browser bundle, built by esbuild from web/islands/client.ts when the server starts (nothing
 * built is committed): one ES module with every island, and one stylesheet (the site's and uPlot's).
 */
import * as esbuild from "esbuild";

export interface Assets {
  js: Uint8Array;
  css: Uint8Array;
  /** Content hash, the cache-busting query of both URLs. */
  version: string;
}

const HERE = new URL(".", import.meta.url).pathname;
let building: Promise<Assets> | undefined;

async function hash(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  return Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Builds once per process (tests start several servers). */
export function buildAssets(): Promise<Assets> {
  return building ??= (async () => {
    try {
      const result = await esbuild.build({
        entryPoints: [`${HERE}islands/client.ts`],
        bundle: true,
        write: false,
        format: "esm",
        target: "es2022",
        minify: true,
        jsx: "automatic",
        jsxImportSource: "preact",
        outdir: "/assets",
        legalComments: "none",
        logLevel: "silent",
      });
      const js = result.outputFiles.find((f) => f.path.endsWith(".js"))!.contents;
      const own = await Deno.readFile(`${HERE}static/style.css`);
      const uplot = result.outputFiles.find((f) => f.path.endsWith(".css"))?.contents ?? new Uint8Array();
      const css = new Uint8Array(uplot.length + 1 + own.length);
      css.set(uplot, 0);
      css[uplot.length] = 10;
      css.set(own, uplot.length + 1);
      const version = (await hash(js)).slice(0, 8) + (await hash(css)).slice(0, 8);
      return { js, css, version };
    } finally {
      await esbuild.stop();
    }
  })();
}
