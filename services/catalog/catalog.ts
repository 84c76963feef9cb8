/** The catalog's handlers and in-memory state: products, stock and reservations, all bounded. */
import {
  CatalogService,
  type Product,
  ProductSchema,
  type ReservedLine,
  ReservedLineSchema,
  ReserveStockResponseSchema,
} from "@tailwatch/proto/catalog/v1";
import { create } from "@bufbuild/protobuf";
import {
  bindService,
  decodePageToken,
  encodePageToken,
  PackedMessages,
  pageSize,
  requireCurrency,
  requireId,
  requireRange,
  requireText,
  type ServiceBinding,
} from "@tailwatch/kit";
import { BoundedMap } from "@tailwatch/runtime";
import { Code, ServiceError } from "@tailwatch/grpc";

export interface CatalogOptions {
  /** Products held at most; creating more is refused with RESOURCE_EXHAUSTED. */
  maxProducts: number;
  /** Reservations remembered (for release and idempotency); the oldest are forgotten first. */
  maxReservations: number;
  /** Stock each seeded product starts with. */
  seedStock: number;
}

/** The label of a reservation whose stock went back (see PackedMessages). */
const RELEASED = "released";

const SEED_PRODUCTS: Array<[string, string, number]> = [
  ["kibble-salmon-2kg", "Salmon kibble, 2 kg", 1899],
  ["pate-chicken-12x85g", "Chicken pâté, 12 × 85 g", 1249],
  ["treats-tuna-60g", "Tuna treats, 60 g", 349],
  ["kitten-milk-200ml", "Kitten milk, 200 ml", 299],
  ["senior-turkey-1kg", "Senior turkey dry food, 1 kg", 1099],
];

const MAX_QUANTITY = 10_000;
const MAX_LINES = 50;

export function createCatalog(options: CatalogOptions): ServiceBinding {
  const products = new Map<string, Product>();
  // What ReserveStock answered, by reservation id, labelled RELEASED once released.
  const reservations = new PackedMessages(ReserveStockResponseSchema, options.maxReservations);
  const reservationByOrder = new BoundedMap<string, string>(options.maxReservations);
  for (const [productId, name, priceCents] of SEED_PRODUCTS) {
    products.set(
      productId,
      create(ProductSchema, {
        productId,
        name,
        description: "",
        priceCents: BigInt(priceCents),
        currency: "EUR",
        stock: options.seedStock,
      }),
    );
  }
  const product = (productId: string) => {
    const found = products.get(requireId("product_id", productId));
    if (!found) throw new ServiceError(Code.NOT_FOUND, `product ${productId} not found`);
    return found;
  };

  return bindService(CatalogService, {
    listProducts(request) {
      const size = pageSize(request.pageSize);
      const after = decodePageToken(request.pageToken);
      const ids = [...products.keys()].sort();
      const start = after === undefined ? 0 : ids.findIndex((id) => id > after);
      const page = start < 0 ? [] : ids.slice(start, start + size);
      const more = start >= 0 && start + size < ids.length;
      return {
        products: page.map((id) => products.get(id)!),
        nextPageToken: more ? encodePageToken(page[page.length - 1]) : "",
      };
    },
    getProduct(request) {
      return { product: product(request.productId) };
    },
    createProduct(request) {
      if (products.size >= options.maxProducts) {
        throw new ServiceError(
          Code.RESOURCE_EXHAUSTED,
          `the catalog holds at most ${options.maxProducts} products`,
        );
      }
      const created = create(ProductSchema, {
        productId: `prod-${crypto.randomUUID()}`,
        name: requireText("name", request.name, 200),
        description: request.description.length <= 2000 ? request.description : (() => {
          throw new ServiceError(Code.INVALID_ARGUMENT, "description must be at most 2000 characters");
        })(),
        priceCents: BigInt(requireRange("price_cents", request.priceCents, 1, 100_000_000)),
        currency: requireCurrency("currency", request.currency),
        stock: requireRange("stock", request.stock, 0, 2_000_000_000),
      });
      products.set(created.productId, created);
      return { product: created };
    },
    reserveStock(request) {
      const orderId = requireId("order_id", request.orderId);
      const existing = reservationByOrder.get(orderId);
      const earlier = existing === undefined ? undefined : reservations.get(existing);
      if (earlier) return earlier;
      if (request.lines.length === 0 || request.lines.length > MAX_LINES) {
        throw new ServiceError(Code.INVALID_ARGUMENT, `lines must hold 1 to ${MAX_LINES} items`);
      }
      const wanted = new Map<Product, number>();
      for (const [i, line] of request.lines.entries()) {
        const quantity = requireRange(`lines[${i}].quantity`, line.quantity, 1, MAX_QUANTITY);
        const item = product(line.productId);
        wanted.set(item, (wanted.get(item) ?? 0) + quantity);
      }
      for (const [item, quantity] of wanted) {
        if (item.stock < quantity) {
          throw new ServiceError(
            Code.FAILED_PRECONDITION,
            `not enough stock of ${item.productId}: ${quantity} wanted, ${item.stock} left`,
          );
        }
      }
      const lines: ReservedLine[] = [];
      for (const [item, quantity] of wanted) {
        item.stock -= quantity;
        lines.push(create(ReservedLineSchema, {
          productId: item.productId,
          quantity,
          unitPriceCents: item.priceCents,
          currency: item.currency,
        }));
      }
      const reservation = create(ReserveStockResponseSchema, {
        reservationId: `res-${crypto.randomUUID()}`,
        lines,
      });
      reservations.set(reservation.reservationId, reservation);
      reservationByOrder.set(orderId, reservation.reservationId);
      return reservation;
    },
    releaseStock(request) {
      const id = requireId("reservation_id", request.reservationId);
      const reservation = reservations.get(id);
      if (!reservation) throw new ServiceError(Code.NOT_FOUND, `reservation ${id} not found`);
      if (reservations.label(id) === RELEASED) return { reservationId: id, released: false };
      reservations.set(id, reservation, RELEASED);
      for (const line of reservation.lines) {
        const item = products.get(line.productId);
        if (item) item.stock = Math.min(2_147_483_647, item.stock + line.quantity);
      }
      return { reservationId: id, released: true };
    },
  });
}
