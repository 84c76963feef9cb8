/** GET/POST /login and POST /logout. */
import { html, pageContext, readForm, type RequestContext } from "../app.ts";
import { Layout } from "../components/Layout.tsx";

/** Where to go after signing in: a path on this server only. */
export function safeNext(next: string | null): string {
  return next && /^\/(?![\/\\])[^\s]*$/.test(next) && next.length < 2000 ? next : "/";
}

async function loginForm(rc: RequestContext, status: number, problem?: string): Promise<Response> {
  const ctx = await pageContext(rc);
  const next = safeNext(rc.url.searchParams.get("next"));
  return html(
    rc,
    <Layout ctx={{ ...ctx, services: [] }} title="Sign in" current="login">
      <form method="post" action={`/login?next=${encodeURIComponent(next)}`} class="login">
        {problem ? <p class="errors" role="alert">{problem}</p> : null}
        <input type="hidden" name="_csrf" value={rc.csrf} />
        <label>
          User
          <input name="user" autocomplete="username" required autofocus />
        </label>
        <label>
          Password
          <input name="password" type="password" autocomplete="current-password" required />
        </label>
        <button type="submit">Sign in</button>
      </form>
    </Layout>,
    status,
  );
}

export async function loginPage(rc: RequestContext): Promise<Response> {
  return await loginForm(rc, 200);
}

export async function loginPost(rc: RequestContext): Promise<Response> {
  const form = await readForm(rc.request, 8192);
  if (!form) return await loginForm(rc, 413, "The form is too large.");
  if (!rc.app.auth.checkCsrf(rc.request, form.get("_csrf"))) {
    return await loginForm(rc, 403, "The form expired: try again.");
  }
  const result = await rc.app.auth.signIn(form.get("user") ?? "", form.get("password") ?? "");
  if (result === "locked") return await loginForm(rc, 429, "Too many failed attempts: wait 5 minutes.");
  if (!result) return await loginForm(rc, 401, "Wrong user or password.");
  return new Response(null, {
    status: 303,
    headers: {
      location: safeNext(rc.url.searchParams.get("next")),
      "set-cookie": rc.app.auth.sessionCookie(result),
    },
  });
}

export async function logoutPost(rc: RequestContext): Promise<Response> {
  const form = await readForm(rc.request, 8192);
  if (!form || !rc.app.auth.checkCsrf(rc.request, form.get("_csrf"))) {
    return new Response("refused: CSRF token missing or wrong\n", { status: 403 });
  }
  rc.app.auth.signOut(rc.request);
  return new Response(null, {
    status: 303,
    headers: { location: "/login", "set-cookie": rc.app.auth.clearSessionCookie() },
  });
}
