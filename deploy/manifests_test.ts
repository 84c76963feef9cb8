/**
 * The deployment manifests, checked offline:
 * - k8s: every overlay renders with `kubectl kustomize`, and every rendered resource validates strictly with
 *   kubernetes-validate against the oldest and the newest Kubernetes version we claim; then what an SRE expects
 *   of them (probes, resources, non-root, PDBs, HPAs, network policies, one ingest worker per partition as a
 *   StatefulSet (one pod per ordinal, as many partitions as pods and as the services publish to) and one
 *   profiler per database, NATS and ClickHouse replicated in prod, every secret key documented, every ConfigMap
 *   there);
 * - compose: the file validates against the compose specification (check-jsonschema), every ${VAR} is in
 *   .env.example with no value committed, start-up order and health checks;
 * - Dockerfiles: multi-stage, pinned images, non-root final stage; the images run the release the tests run
 *   (nats-server, Deno);
 * - the NATS configurations (single node and the prod cluster) pass `nats-server -t`; every XML file parses.
 */
import { assert, assertEquals, NATS_SERVER_VERSION, natsServerBinary } from "@tailwatch/testing";
import { mustRun, parseYamlDocuments, ROOT, runTool, venvTool } from "./test_helpers.ts";

const DEPLOY = `${ROOT}deploy`;
/** The Kubernetes versions the rendered manifests must be valid for (oldest supported, newest known). */
const KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"];

// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;

const rendered = new Map<string, Obj[]>();

async function render(overlay: string): Promise<Obj[]> {
  if (!rendered.has(overlay)) {
    const text = await mustRun("kubectl", ["kustomize", `${DEPLOY}/k8s/overlays/${overlay}`]);
    rendered.set(overlay, (await parseYamlDocuments(text)) as Obj[]);
  }
  return rendered.get(overlay)!;
}

const workloads = (objs: Obj[]) => objs.filter((o) => ["Deployment", "StatefulSet", "Job"].includes(o.kind));
const named = (objs: Obj[], kind: string, name: string) => {
  const found = objs.find((o) => o.kind === kind && o.metadata.name === name);
  assert(found, `${kind}/${name} is rendered`);
  return found!;
};
const podSpec = (o: Obj) => o.spec.template.spec;
const containerEnv = (o: Obj, name: string) =>
  podSpec(o).containers[0].env?.find((e: Obj) => e.name === name)?.value as string | undefined;
const containerEnvRef = (o: Obj, name: string) =>
  podSpec(o).containers[0].env?.find((e: Obj) => e.name === name)?.valueFrom as Obj | undefined;

for (const overlay of ["dev", "prod"]) {
  Deno.test(`k8s overlay ${overlay}: renders and validates strictly against Kubernetes ${KUBERNETES_VERSIONS.join(" and ")}`, async () => {
    const objs = await render(overlay);
    assert(objs.length > 50, `${objs.length} resources`);
    const file = await Deno.makeTempFile({ prefix: `tailwatch-${overlay}-`, suffix: ".yaml" });
    try {
      await Deno.writeTextFile(
        file,
        await mustRun("kubectl", ["kustomize", `${DEPLOY}/k8s/overlays/${overlay}`]),
      );
      const runs = await Promise.all(
        KUBERNETES_VERSIONS.map((version) =>
          runTool(venvTool("kubernetes-validate"), ["--strict", "-k", version, file])
        ),
      );
      runs.forEach(({ code, output }, i) => {
        const bad = output.split("\n").filter((line) => /^(ERROR|WARN)/.test(line));
        assertEquals(bad, [], `kubernetes-validate -k ${KUBERNETES_VERSIONS[i]} --strict`);
        assertEquals(code, 0, output.slice(-2000));
        const passed = output.split("\n").filter((line) =>
          line.startsWith("INFO") && line.includes("passed")
        ).length;
        assertEquals(passed, objs.length, `every resource validated against ${KUBERNETES_VERSIONS[i]}`);
      });
    } finally {
      await Deno.remove(file);
    }
  });

  Deno.test(`k8s overlay ${overlay}: probes, resources, non-root, disruption budgets, autoscaling, network policies, secrets`, async () => {
    const objs = await render(overlay);
    const namespace = overlay === "prod" ? "tailwatch" : "tailwatch-dev";
    for (const o of objs.filter((o) => o.kind !== "Namespace")) {
      assertEquals(o.metadata.namespace, namespace, `${o.kind}/${o.metadata.name} namespace`);
    }
    const secretKeys = new Set(
      (await Deno.readTextFile(`${DEPLOY}/k8s/secrets.env.example`)).split("\n")
        .filter((line) => /^[a-z0-9-]+=$/.test(line)).map((line) => line.slice(0, -1)),
    );
    const configMaps = new Set(objs.filter((o) => o.kind === "ConfigMap").map((o) => o.metadata.name));
    for (const w of workloads(objs)) {
      const what = `${w.kind}/${w.metadata.name}`;
      const spec = podSpec(w);
      assert(spec.securityContext?.runAsNonRoot === true, `${what}: runs as non-root`);
      assertEquals(spec.securityContext?.seccompProfile?.type, "RuntimeDefault", `${what}: seccomp`);
      for (const c of spec.containers) {
        assert(/:[\w.-]+$/.test(c.image) && !/:latest$/.test(c.image), `${what}: image ${c.image} pinned`);
        if (overlay === "prod") {
          assert(!/:dev$/.test(c.image), `${what}: prod runs a released image, not ${c.image}`);
        }
        assert(c.resources?.requests?.cpu && c.resources?.requests?.memory, `${what}: requests`);
        assert(c.resources?.limits?.memory, `${what}: memory limit`);
        assertEquals(c.securityContext?.allowPrivilegeEscalation, false, `${what}: no privilege escalation`);
        assertEquals(c.securityContext?.capabilities?.drop, ["ALL"], `${what}: capabilities dropped`);
        if (w.kind !== "Job") assert(c.readinessProbe, `${what}: readiness probe`);
        for (const e of c.env ?? []) {
          const ref = e.valueFrom?.secretKeyRef;
          if (ref) {
            assertEquals(ref.name, "tailwatch-secrets", `${what}: ${e.name}`);
            assert(
              secretKeys.has(ref.key),
              `${what}: secret key ${ref.key} is in deploy/k8s/secrets.env.example`,
            );
          }
        }
      }
      for (const v of spec.volumes ?? []) {
        if (v.configMap) {
          assert(configMaps.has(v.configMap.name), `${what}: ConfigMap ${v.configMap.name} is rendered`);
        }
        if (v.secret) assertEquals(v.secret.secretName, "tailwatch-secrets", `${what}: secret volume`);
      }
    }
    // The services: native gRPC probes, a preStop delay, an HPA and a PDB each; metrics annotations.
    for (const [name, port] of [["catalog", 50051], ["orders", 50052], ["payments", 50053]] as const) {
      const d = named(objs, "Deployment", name);
      const c = podSpec(d).containers[0];
      assertEquals(c.readinessProbe.grpc?.port, port, `${name}: gRPC readiness`);
      assertEquals(c.livenessProbe.grpc?.port, port, `${name}: gRPC liveness`);
      assertEquals(c.lifecycle?.preStop?.exec?.command, ["sleep", "5"], `${name}: preStop delay`);
      assert(
        c.livenessProbe.periodSeconds * c.livenessProbe.failureThreshold >
          podSpec(d).terminationGracePeriodSeconds,
        `${name}: a drain (NOT_SERVING) never trips liveness`,
      );
      assertEquals(d.spec.template.metadata.annotations["prometheus.io/scrape"], "true");
      const hpa = named(objs, "HorizontalPodAutoscaler", name);
      assertEquals(hpa.spec.scaleTargetRef.name, name);
      const pdb = named(objs, "PodDisruptionBudget", name);
      if (overlay === "prod") {
        assertEquals(pdb.spec.minAvailable, 2);
        assert(hpa.spec.minReplicas >= 3, `${name}: at least 3 replicas in prod`);
      } else {
        assertEquals(pdb.spec.maxUnavailable, 1, `${name}: one replica in dev, drains not blocked`);
      }
      assertEquals(pdb.spec.selector.matchLabels["app.kubernetes.io/name"], name);
    }
    // One profiler per database: never two at once, even during a rollout.
    const profilerDeployment = named(objs, "Deployment", "profiler");
    assertEquals(profilerDeployment.spec.replicas, 1, "profiler: one replica");
    assertEquals(profilerDeployment.spec.strategy.type, "Recreate", "profiler: no overlap during a rollout");
    // ingest: one worker per partition, each its own durable: a StatefulSet (at most one pod per ordinal, so
    // a rollout never runs two workers of one durable), the partition from the pod's name, as many partitions
    // as pods, and the services publishing to exactly those partitions.
    assert(
      !objs.some((o) => o.kind === "Deployment" && o.metadata.name === "ingest"),
      "ingest: no Deployment",
    );
    const ingest = named(objs, "StatefulSet", "ingest");
    const partitions = overlay === "prod" ? 4 : 1;
    assertEquals(ingest.spec.replicas, partitions, "ingest: one pod per partition");
    assertEquals(containerEnv(ingest, "INGEST_PARTITIONS"), String(partitions), "ingest: INGEST_PARTITIONS");
    assertEquals(
      containerEnvRef(ingest, "INGEST_PARTITION")?.fieldRef?.fieldPath,
      "metadata.name",
      "ingest: the partition is the pod's ordinal",
    );
    assertEquals(ingest.spec.updateStrategy.type, "RollingUpdate", "ingest: one pod at a time");
    assertEquals(named(objs, "Service", ingest.spec.serviceName).spec.clusterIP, "None", "governing Service");
    assertEquals(containerEnv(ingest, "INGEST_MIGRATE_ON_START"), "false", "ingest: the setup Job migrates");
    assertEquals(containerEnv(ingest, "INGEST_FILTER_SUBJECT"), undefined, "ingest: the partition decides");
    for (const service of ["catalog", "orders", "payments"]) {
      assertEquals(
        containerEnv(named(objs, "Deployment", service), "EVENT_PARTITIONS") ?? "1",
        String(partitions),
        `${service} publishes to the ${partitions} partition(s) ingest reads`,
      );
    }
    assert(
      podSpec(named(objs, "Deployment", "profiler")).containers[0].readinessProbe.exec,
      "profiler: exec probe",
    );
    // The dashboard reads the processes' numbers from Prometheus (several pods per name), and may reach it.
    const web = named(objs, "Deployment", "web");
    assertEquals(containerEnv(web, "WEB_PROMETHEUS_URL"), "http://prometheus:9090", "web reads Prometheus");
    assertEquals(containerEnv(web, "WEB_METRICS_TARGETS"), undefined, "not one pod's /metrics");
    // Network policies: deny by default, DNS, and one policy per component.
    const policies = objs.filter((o) => o.kind === "NetworkPolicy");
    const deny = policies.find((p) => p.metadata.name === "default-deny")!;
    assertEquals(deny.spec.podSelector, {});
    assertEquals(deny.spec.policyTypes, ["Ingress", "Egress"]);
    const webPolicy = policies.find((p) => p.metadata.name === "web")!;
    assert(
      webPolicy.spec.egress.some((e: Obj) =>
        e.ports.some((p: Obj) => p.port === 9090) &&
        e.to.some((t: Obj) => t.podSelector?.matchLabels?.["app.kubernetes.io/name"] === "prometheus")
      ),
      "web -> prometheus:9090 allowed",
    );
    for (const w of workloads(objs)) {
      const name = w.spec.template.metadata.labels["app.kubernetes.io/name"];
      assert(
        policies.some((p) => p.spec.podSelector?.matchLabels?.["app.kubernetes.io/name"] === name),
        `${name}: a policy`,
      );
    }
    // NATS and the stream: one node in dev; three nodes, a clustered config and 3 stream replicas in prod.
    const nats = named(objs, "StatefulSet", "nats");
    const setup = named(objs, "Job", "tailwatch-setup");
    const natsConf = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("nats-config"))!;
    const expectNats = overlay === "prod" ? 3 : 1;
    assertEquals(nats.spec.replicas, expectNats, "NATS nodes");
    assertEquals(containerEnv(setup, "STREAM_REPLICAS"), String(expectNats), "stream replicas");
    assertEquals(/cluster \{/.test(natsConf.data["nats.conf"]), overlay === "prod", "clustered nats.conf");
    assertEquals(
      podSpec(nats).containers[0].image,
      `nats:${NATS_SERVER_VERSION.slice(1)}-alpine`,
      "the tested release",
    );
    const clickhouse = named(objs, "StatefulSet", "clickhouse");
    if (overlay === "prod") {
      assertEquals(clickhouse.spec.replicas, 3, "ClickHouse replicas");
      assertEquals(named(objs, "StatefulSet", "clickhouse-keeper").spec.replicas, 3, "Keeper nodes");
      assertEquals(containerEnv(setup, "SETUP_INIT_SQL"), "/etc/tailwatch/replicated-schema.sql");
      const pinned = "http://clickhouse-0.clickhouse-headless:8123";
      assertEquals(containerEnv(setup, "CLICKHOUSE_URL"), pinned, "setup on one replica");
      assertEquals(
        containerEnv(named(objs, "StatefulSet", "ingest"), "CLICKHOUSE_URL"),
        pinned,
        "ingest on one replica",
      );
      const mounts = podSpec(clickhouse).containers[0].volumeMounts.map((m: Obj) => m.mountPath);
      assert(mounts.includes("/etc/clickhouse-server/users.d/replication.xml"), "quorum settings mounted");
    } else {
      assertEquals(clickhouse.spec.replicas, 1);
      assert(
        !objs.some((o) => o.kind === "StatefulSet" && o.metadata.name === "clickhouse-keeper"),
        "no Keeper in dev",
      );
    }
  });
}

Deno.test("compose: valid against the compose specification; secrets from .env only; start-up order; health checks", async () => {
  const file = `${DEPLOY}/compose/compose.yaml`;
  const out = await mustRun(venvTool("check-jsonschema"), ["--builtin-schema", "vendor.compose-spec", file]);
  assert(/ok -- validation done/.test(out), out);
  const text = await Deno.readTextFile(file);
  const example = await Deno.readTextFile(`${DEPLOY}/compose/.env.example`);
  const documented = new Map(
    example.split("\n").filter((l) => /^[A-Z][A-Z0-9_]*=/.test(l)).map((
      l,
    ) => [l.split("=")[0], l.slice(l.indexOf("=") + 1)]),
  );
  for (const [, name] of text.matchAll(/\$\{([A-Z][A-Z0-9_]*)/g)) {
    assert(documented.has(name), `${name} (used by compose.yaml) is in .env.example`);
  }
  for (const [name, value] of documented) {
    if (name !== "TAILWATCH_TAG") {
      assert(value === "" || value === "''", `.env.example commits no value for ${name}`);
    }
  }
  const gitignore = await Deno.readTextFile(`${ROOT}.gitignore`);
  assert(gitignore.split("\n").includes("deploy/compose/.env"), ".env is git-ignored");
  const [compose] = (await parseYamlDocuments(text)) as Obj[];
  for (const [name, service] of Object.entries(compose.services as Record<string, Obj>)) {
    if (service.image) {
      assert(/:[\w.${}:-]+$/.test(service.image) && !/:latest$/.test(service.image), `${name}: pinned`);
    }
    if (name === "setup") {
      assertEquals(service.restart, "no");
      continue;
    }
    assert(service.healthcheck?.test, `${name}: a health check`);
  }
  const after = (name: string) => compose.services[name].depends_on as Record<string, { condition: string }>;
  assertEquals(after("setup").nats.condition, "service_healthy");
  assertEquals(after("setup").clickhouse.condition, "service_healthy");
  for (const name of ["catalog", "payments", "ingest", "profiler"]) {
    assertEquals(after(name).setup.condition, "service_completed_successfully", `${name} waits for setup`);
  }
  assertEquals(after("orders").catalog.condition, "service_healthy");
  assertEquals(
    compose.services.nats.image,
    `nats:${NATS_SERVER_VERSION.slice(1)}-alpine`,
    "the tested release",
  );
  for (const [name, service] of Object.entries(compose.services as Record<string, Obj>)) {
    for (const port of (service.ports ?? []) as string[]) {
      assert(port.startsWith("127.0.0.1:"), `${name}: ${port} is published on loopback only`);
    }
  }
});

Deno.test("Dockerfiles: multi-stage, pinned images, non-root runtime; the Deno and nats-server releases the tests run", async () => {
  const tools = JSON.parse(await Deno.readTextFile(`${ROOT}tools/package.json`));
  for (const name of ["deno", "profiler", "grafana"]) {
    const text = await Deno.readTextFile(`${DEPLOY}/docker/${name}.Dockerfile`);
    const args = Object.fromEntries([...text.matchAll(/^ARG (\w+)=(\S+)$/gm)].map((m) => [m[1], m[2]]));
    const froms = [...text.matchAll(/^FROM (\S+)/gm)].map((m) =>
      m[1].replace(/\$\{(\w+)\}/g, (_, a) => args[a])
    );
    assert(froms.length >= 2, `${name}: multi-stage`);
    for (const image of froms) {
      assert(/:[\w.-]*\d[\w.-]*$/.test(image), `${name}: FROM ${image} pinned to a version`);
    }
    const final = text.slice(text.lastIndexOf("\nFROM "));
    const user = /^USER (\S+)/m.exec(final)?.[1];
    assert(
      user && !/^(root|0)(:|$)/.test(user),
      `${name}: the runtime stage runs as a non-root user (${user})`,
    );
    assert(!/apt-get install[^\n]*(cmake|g\+\+)/.test(final), `${name}: no build tools in the runtime stage`);
  }
  const deno = await Deno.readTextFile(`${DEPLOY}/docker/deno.Dockerfile`);
  assertEquals(
    /^ARG DENO_VERSION=(\S+)$/m.exec(deno)?.[1],
    tools.dependencies.deno,
    "the Deno ./dev installs",
  );
  const dockerignore = await Deno.readTextFile(`${ROOT}.dockerignore`);
  for (
    const entry of [".git", ".data", ".venv", "node_modules", "deploy/compose/.env", "deploy/k8s/secrets.env"]
  ) {
    assert(dockerignore.split("\n").includes(entry), `.dockerignore keeps ${entry} out of images`);
  }
});

Deno.test("nats-server accepts the single-node and the prod cluster configuration; every XML file parses", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-natsconf-" });
  try {
    const env = {
      NATS_SERVER_NAME: "nats-0",
      NATS_SETUP_PASSWORD: "a",
      NATS_CATALOG_PASSWORD: "b",
      NATS_ORDERS_PASSWORD: "c",
      NATS_PAYMENTS_PASSWORD: "d",
      NATS_INGEST_PASSWORD: "e",
    };
    await Deno.copyFile(`${DEPLOY}/nats/auth.conf`, `${dir}/auth.conf`);
    for (const conf of [`${DEPLOY}/nats/nats.conf`, `${DEPLOY}/k8s/overlays/prod/nats/nats.conf`]) {
      await Deno.copyFile(conf, `${dir}/nats.conf`);
      const out = await mustRun(natsServerBinary(), ["-c", `${dir}/nats.conf`, "-t"], { env });
      assert(/is valid/.test(out), `${conf}: ${out}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const xml: string[] = [];
  for (const dir of ["clickhouse/config.d", "clickhouse/users.d", "k8s/overlays/prod/clickhouse"]) {
    for await (const entry of Deno.readDir(`${DEPLOY}/${dir}`)) {
      if (entry.name.endsWith(".xml")) xml.push(`${DEPLOY}/${dir}/${entry.name}`);
    }
  }
  assertEquals(xml.length, 5);
  await mustRun("python3", [
    "-c",
    "import sys, xml.dom.minidom\nfor f in sys.argv[1:]: xml.dom.minidom.parse(f)",
    ...xml,
  ]);
});
