/**
 * The cat food store's calls as load scenarios use them: browsing (list and get products), buying (CreateOrder),
 * after-sales (get, list and cancel orders, refund payments), and calls that fail on purpose (an unknown
 * product: NOT_FOUND; a declined card: FAILED_PRECONDITION, with the stock released by compensation). The same
 * mix is offered over gRPC (ghz) and over the REST shims (vegeta).
 */
import type { Call, CallContext, Fixtures } from "../scenario.ts";

/** The seeded products (services/catalog/catalog.ts). */
export const PRODUCTS = [
  "kibble-salmon-2kg",
  "pate-chicken-12x85g",
  "treats-tuna-60g",
  "kitten-milk-200ml",
  "senior-turkey-1kg",
];
export const UNKNOWN_PRODUCT = "no-such-product";
export const GOOD_CARD = "4242424242424242";
/** The test card payments always declines (services/payments/payments.ts). */
export const DECLINED_CARD = "4000000000000002";

/** A CreateOrder body (protobuf JSON, field names as in the .proto) that succeeds against the seeded catalog. */
export function orderBody(customer: number, card = GOOD_CARD) {
  return {
    customer_id: `load-${customer}`,
    lines: [{ product_id: "treats-tuna-60g", quantity: 1 }, { product_id: "kibble-salmon-2kg", quantity: 1 }],
    card_number: card,
  };
}

/** One call: orders.CreateOrder over gRPC for ten customers in turn, each order expected OK. */
export function createOrderCalls(): Call[] {
  return [{
    label: "buy: create an order",
    service: "orders",
    method: "orders.v1.OrderService/CreateOrder",
    protocol: "grpc",
    weight: 1,
    expect: "OK",
    data: Array.from({ length: 10 }, (_, i) => orderBody(i)),
  }];
}

/** The shares of the store mix (they add up to 1). */
export const MIX = {
  listProducts: 0.15,
  getProduct: 0.40,
  createOrder: 0.22,
  getOrder: 0.10,
  listOrders: 0.05,
  cancelOrder: 0.04,
  refund: 0.04,
} as const;

/** Orders the mix needs per phase: one to cancel per CancelOrder, one to refund per Refund, a few to read. */
export function mixFixtureOrders(hits: (weight: number) => number): number {
  return Math.max(1, hits(MIX.cancelOrder)) + Math.max(1, hits(MIX.refund)) + 10;
}

/** Disjoint fixture slices: orders to cancel, payments to refund, and every order for reads. */
function slices(context: CallContext) {
  const orders = context.fixtures.orders;
  const cancels = Math.max(1, context.hits(MIX.cancelOrder));
  const refunds = Math.max(1, context.hits(MIX.refund));
  const take = (from: number, count: number) => {
    const slice = orders.slice(from, from + count);
    return slice.length > 0 ? slice : orders.slice(0, 1);
  };
  return { cancel: take(0, cancels), refund: take(cancels, refunds), read: orders.slice(0, 200) };
}

/** Nine known products then one unknown: a tenth of GetProduct fails with NOT_FOUND, on purpose. */
const productIds = [...PRODUCTS, ...PRODUCTS.slice(0, 4), UNKNOWN_PRODUCT];

/** The store mix over gRPC. */
export function grpcStoreMix(context: CallContext): Call[] {
  const { cancel, refund, read } = slices(context);
  return [
    {
      label: "browse: list products",
      service: "catalog",
      method: "catalog.v1.CatalogService/ListProducts",
      protocol: "grpc",
      weight: MIX.listProducts,
      expect: "OK",
      data: [{ page_size: 20 }, { page_size: 2 }],
    },
    {
      label: "browse: get a product (1 in 10 unknown)",
      service: "catalog",
      method: "catalog.v1.CatalogService/GetProduct",
      protocol: "grpc",
      weight: MIX.getProduct,
      expect: "OK, NOT_FOUND for the unknown product",
      data: productIds.map((id) => ({ product_id: id })),
    },
    {
      label: "buy: create an order (1 in 10 with a declined card)",
      service: "orders",
      method: "orders.v1.OrderService/CreateOrder",
      protocol: "grpc",
      weight: MIX.createOrder,
      expect: "OK, FAILED_PRECONDITION for the declined card",
      data: Array.from({ length: 10 }, (_, i) => orderBody(i, i === 9 ? DECLINED_CARD : GOOD_CARD)),
    },
    {
      label: "after-sales: get an order",
      service: "orders",
      method: "orders.v1.OrderService/GetOrder",
      protocol: "grpc",
      weight: MIX.getOrder,
      expect: "OK",
      data: read.map((o) => ({ order_id: o.orderId })),
    },
    {
      label: "after-sales: list a customer's orders",
      service: "orders",
      method: "orders.v1.OrderService/ListOrders",
      protocol: "grpc",
      weight: MIX.listOrders,
      expect: "OK",
      data: Array.from({ length: 10 }, (_, i) => ({ customer_id: `load-${i}`, page_size: 10 })),
    },
    {
      label: "after-sales: cancel an order (refund + release)",
      service: "orders",
      method: "orders.v1.OrderService/CancelOrder",
      protocol: "grpc",
      weight: MIX.cancelOrder,
      expect: "OK",
      data: cancel.map((o) => ({ order_id: o.orderId })),
    },
    {
      label: "after-sales: refund a payment",
      service: "payments",
      method: "payments.v1.PaymentService/Refund",
      protocol: "grpc",
      weight: MIX.refund,
      expect: "OK",
      data: refund.map((o) => ({ payment_id: o.paymentId })),
    },
  ];
}

/** The same mix on the REST shims. */
export function restStoreMix(context: CallContext): Call[] {
  const { cancel, refund, read } = slices(context);
  return [
    {
      label: "browse: list products",
      service: "catalog",
      method: "catalog.v1.CatalogService/ListProducts",
      protocol: "http",
      weight: MIX.listProducts,
      expect: "200",
      requests: [{ method: "GET", path: "/v1/products?pageSize=20" }, {
        method: "GET",
        path: "/v1/products?pageSize=2",
      }],
    },
    {
      label: "browse: get a product (1 in 10 unknown)",
      service: "catalog",
      method: "catalog.v1.CatalogService/GetProduct",
      protocol: "http",
      weight: MIX.getProduct,
      expect: "200, 404 for the unknown product",
      requests: productIds.map((id) => ({ method: "GET", path: `/v1/products/${id}` })),
    },
    {
      label: "buy: create an order (1 in 10 with a declined card)",
      service: "orders",
      method: "orders.v1.OrderService/CreateOrder",
      protocol: "http",
      weight: MIX.createOrder,
      expect: "200, 400 (FAILED_PRECONDITION) for the declined card",
      requests: Array.from({ length: 10 }, (_, i) => ({
        method: "POST",
        path: "/v1/orders",
        body: orderBody(i, i === 9 ? DECLINED_CARD : GOOD_CARD),
      })),
    },
    {
      label: "after-sales: get an order",
      service: "orders",
      method: "orders.v1.OrderService/GetOrder",
      protocol: "http",
      weight: MIX.getOrder,
      expect: "200",
      requests: read.map((o) => ({ method: "GET", path: `/v1/orders/${o.orderId}` })),
    },
    {
      label: "after-sales: list a customer's orders",
      service: "orders",
      method: "orders.v1.OrderService/ListOrders",
      protocol: "http",
      weight: MIX.listOrders,
      expect: "200",
      requests: Array.from({ length: 10 }, (_, i) => ({
        method: "GET",
        path: `/v1/orders?customerId=load-${i}&pageSize=10`,
      })),
    },
    {
      label: "after-sales: cancel an order (refund + release)",
      service: "orders",
      method: "orders.v1.OrderService/CancelOrder",
      protocol: "http",
      weight: MIX.cancelOrder,
      expect: "200",
      requests: cancel.map((o) => ({ method: "POST", path: `/v1/orders/${o.orderId}:cancel`, body: {} })),
    },
    {
      label: "after-sales: refund a payment",
      service: "payments",
      method: "payments.v1.PaymentService/Refund",
      protocol: "http",
      weight: MIX.refund,
      expect: "200",
      requests: refund.map((o) => ({ method: "POST", path: `/v1/payments/${o.paymentId}:refund`, body: {} })),
    },
  ];
}

/** Browse and buy, 80/20: what the closed-model users do. */
export function browseAndBuy(_context: CallContext): Call[] {
  return [
    {
      label: "browse: get a product",
      service: "catalog",
      method: "catalog.v1.CatalogService/GetProduct",
      protocol: "grpc",
      weight: 0.8,
      expect: "OK",
      data: PRODUCTS.map((id) => ({ product_id: id })),
    },
    {
      label: "buy: create an order",
      service: "orders",
      method: "orders.v1.OrderService/CreateOrder",
      protocol: "grpc",
      weight: 0.2,
      expect: "OK",
      data: Array.from({ length: 10 }, (_, i) => orderBody(i)),
    },
  ];
}

/** No fixtures (for scenarios without after-sales calls). */
export const NO_FIXTURES: Fixtures = { orders: [] };
