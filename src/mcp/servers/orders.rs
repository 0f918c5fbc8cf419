//! The orders server: customers, orders and their shipments in SQLite, over stdio.
//!
//! The classic voice-agent case, "where is my order?": the planner looks an
//! order up by number, or a customer's orders by email or name, and can cancel
//! an order that has not shipped yet. `cancel_order` is the one write; the
//! policy layer marks it sensitive.
//!
//! Expected failures (unknown order, order already shipped) come back as tool
//! results with `is_error: true` and a sentence the model can say or act on;
//! protocol errors are kept for malformed requests and a broken database.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use rusqlite::{params, Connection, OptionalExtension};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::tool_error;

/// The bundled seed: schema plus 20 customers and 40 orders (ids 1021–1060).
pub const SEED_SQL: &str = include_str!("../../../pipelines/data/orders.sql");

/// URI of the resource holding the database schema (SQL).
pub const SCHEMA_URI: &str = "orders://schema";
/// URI of the resource explaining each order status (JSON).
pub const STATUSES_URI: &str = "orders://statuses";

/// Most orders a `find_orders` call returns: a voice answer cannot read out more.
const MAX_FOUND_ORDERS: usize = 20;

/// Errors opening or seeding the database.
#[derive(Debug, thiserror::Error)]
pub enum OrdersDbError {
    #[error("cannot create the directory for the orders database {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the orders database {path}: {source} (set ORDERS_DB to a writable path)")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot seed the orders database {path}: {source} (delete the file to reseed it)")]
    Seed {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Where an order is in its life. The names are what the database and the
/// tool results use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Being packed; can still be cancelled.
    Processing,
    /// With the carrier; has a tracking number and an ETA.
    Shipped,
    /// Arrives today.
    OutForDelivery,
    /// Scanned at the customer's address.
    Delivered,
    /// Cancelled before it shipped.
    Cancelled,
    /// Sent back after delivery and refunded.
    Returned,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Shipped => "shipped",
            Self::OutForDelivery => "out_for_delivery",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Returned => "returned",
        }
    }

    const ALL: [Self; 6] = [
        Self::Processing,
        Self::Shipped,
        Self::OutForDelivery,
        Self::Delivered,
        Self::Cancelled,
        Self::Returned,
    ];

    fn meaning(self) -> &'static str {
        match self {
            Self::Processing => "Being packed in the warehouse; can still be cancelled.",
            Self::Shipped => {
                "Handed to the carrier; has a tracking number and an estimated delivery date."
            }
            Self::OutForDelivery => "On the delivery truck; arrives today, usually by 8 pm.",
            Self::Delivered => "Scanned as delivered at the customer's address.",
            Self::Cancelled => "Cancelled before shipping; the payment was released.",
            Self::Returned => "Returned after delivery and refunded.",
        }
    }
}

/// Parameters of `get_order`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetOrderParams {
    /// The order number, e.g. 1042 (callers often say "ten forty-two").
    pub order_id: i64,
}

/// Parameters of `find_orders`. Give `email` or `name` (or both).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindOrdersParams {
    /// The customer's email address, matched exactly (case-insensitive). Best when known.
    #[serde(default)]
    pub email: Option<String>,
    /// The customer's full or partial name, matched case-insensitively. Several
    /// customers can share a name; each result names its customer's email.
    #[serde(default)]
    pub name: Option<String>,
    /// Only orders in this status.
    #[serde(default)]
    pub status: Option<OrderStatus>,
}

/// Parameters of `get_customer`. Give `email` or `name`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetCustomerParams {
    /// The customer's email address, matched exactly (case-insensitive).
    #[serde(default)]
    pub email: Option<String>,
    /// The customer's full or partial name, matched case-insensitively.
    #[serde(default)]
    pub name: Option<String>,
}

/// Parameters of `cancel_order`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderParams {
    /// The order number to cancel, e.g. 1043. Only orders still processing can be cancelled.
    pub order_id: i64,
    /// Why the customer cancels, in their words (kept with the order, 1–500 characters).
    pub reason: String,
}

/// One line of an order.
#[derive(Debug, Serialize)]
pub struct OrderItem {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    /// Price of one, formatted for speaking, e.g. "$89.99".
    pub unit_price: String,
}

/// Who placed an order.
#[derive(Debug, Serialize)]
pub struct CustomerRef {
    pub name: String,
    pub email: String,
}

/// An order with everything a caller may ask about it.
#[derive(Debug, Serialize)]
pub struct Order {
    pub order_id: i64,
    pub customer: CustomerRef,
    pub placed_on: String,
    pub status: String,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    /// Estimated delivery date (ISO); none once delivered or cancelled.
    pub eta: Option<String>,
    pub delivered_on: Option<String>,
    pub total: String,
    pub cancel_reason: Option<String>,
    pub items: Vec<OrderItem>,
}

/// An order in a list: enough to tell orders apart by voice.
#[derive(Debug, Serialize)]
pub struct OrderSummary {
    pub order_id: i64,
    pub customer: CustomerRef,
    pub placed_on: String,
    pub status: String,
    pub eta: Option<String>,
    pub total: String,
    pub item_count: i64,
}

/// A customer and how many orders they have.
#[derive(Debug, Serialize)]
pub struct Customer {
    pub customer_id: i64,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub city: String,
    pub loyalty_tier: String,
    pub order_count: i64,
}

fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// Opens the database at `path`, creating it (and its directory) and loading
/// the bundled seed when the file does not exist yet.
///
/// # Errors
/// When the directory or file cannot be created or opened, or the seed fails.
pub fn open_or_seed(path: &Path) -> Result<Connection, OrdersDbError> {
    let existed = path.exists();
    if !existed {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OrdersDbError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
    }
    let conn = Connection::open(path).map_err(|source| OrdersDbError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let seeded: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orders')",
            [],
            |row| row.get(0),
        )
        .map_err(|source| OrdersDbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if !seeded {
        // One transaction, so a crash mid-seed leaves an empty file that the
        // next start seeds again rather than half a database.
        conn.execute_batch(&format!("BEGIN;\n{SEED_SQL}\nCOMMIT;"))
            .map_err(|source| OrdersDbError::Seed {
                path: path.to_path_buf(),
                source,
            })?;
        tracing::info!(path = %path.display(), message = "Orders database seeded.");
    }
    Ok(conn)
}

/// The orders MCP server. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct OrdersServer {
    // A std mutex, not tokio's: every query is short and never held across an
    // await, and rusqlite's Connection is Send but not Sync.
    db: Arc<Mutex<Connection>>,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for OrdersServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdersServer").finish_non_exhaustive()
    }
}

fn internal(error: rusqlite::Error) -> McpError {
    tracing::error!(%error, message = "Orders query failed.");
    McpError::internal_error("the orders database failed; try again later", None)
}

fn structured<T: Serialize>(value: &T) -> Result<CallToolResult, McpError> {
    let value = serde_json::to_value(value)
        .map_err(|error| McpError::internal_error(error.to_string(), None))?;
    Ok(CallToolResult::structured(value))
}

/// A non-empty, trimmed value of an optional text parameter.
fn given(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

impl OrdersServer {
    /// Serves the database behind `conn` (see [`open_or_seed`]).
    pub fn new(conn: Connection) -> Self {
        Self {
            db: Arc::new(Mutex::new(conn)),
            tool_router: Self::tool_router(),
        }
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, McpError> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (statements are atomic), so a poisoned lock is still usable.
        let conn = self
            .db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn).map_err(internal)
    }

    fn load_order(conn: &Connection, order_id: i64) -> rusqlite::Result<Option<Order>> {
        let order = conn
            .query_row(
                "SELECT o.id, c.name, c.email, o.placed_on, o.status, o.carrier, o.tracking_number,
                        o.eta, o.delivered_on, o.total_cents, o.cancel_reason
                 FROM orders o JOIN customers c ON c.id = o.customer_id
                 WHERE o.id = ?1",
                params![order_id],
                |row| {
                    Ok(Order {
                        order_id: row.get(0)?,
                        customer: CustomerRef {
                            name: row.get(1)?,
                            email: row.get(2)?,
                        },
                        placed_on: row.get(3)?,
                        status: row.get(4)?,
                        carrier: row.get(5)?,
                        tracking_number: row.get(6)?,
                        eta: row.get(7)?,
                        delivered_on: row.get(8)?,
                        total: dollars(row.get(9)?),
                        cancel_reason: row.get(10)?,
                        items: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut order) = order else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached(
            "SELECT sku, name, quantity, unit_price_cents FROM order_items
             WHERE order_id = ?1 ORDER BY rowid",
        )?;
        order.items = stmt
            .query_map(params![order_id], |row| {
                Ok(OrderItem {
                    sku: row.get(0)?,
                    name: row.get(1)?,
                    quantity: row.get(2)?,
                    unit_price: dollars(row.get(3)?),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(order))
    }
}

#[tool_router]
impl OrdersServer {
    /// Everything about one order: status, carrier, tracking number, ETA, items and total.
    #[tool(
        description = "Look up one order by its number: status, carrier, tracking number, estimated delivery date (eta), items and total. Use for 'where is my order?'.",
        annotations(title = "Get order", read_only_hint = true)
    )]
    fn get_order(
        &self,
        Parameters(GetOrderParams { order_id }): Parameters<GetOrderParams>,
    ) -> Result<CallToolResult, McpError> {
        match self.with_db(|conn| Self::load_order(conn, order_id))? {
            Some(order) => structured(&order),
            None => Ok(tool_error(format!(
                "No order {order_id} was found. Order numbers have four digits, like 1042; \
                 ask the caller to check the number, or look their orders up by email with find_orders."
            ))),
        }
    }

    /// A customer's orders, newest first.
    #[tool(
        description = "List a customer's orders, newest first, by the customer's email or name, optionally only those in one status. Use when the caller does not know the order number.",
        annotations(title = "Find orders", read_only_hint = true)
    )]
    fn find_orders(
        &self,
        Parameters(params): Parameters<FindOrdersParams>,
    ) -> Result<CallToolResult, McpError> {
        let email = given(params.email.as_ref()).map(str::to_owned);
        let name = given(params.name.as_ref()).map(str::to_owned);
        if email.is_none() && name.is_none() {
            return Ok(tool_error(
                "Give the customer's email or name to find their orders.",
            ));
        }
        let status = params.status.map(OrderStatus::as_str);
        let orders = self.with_db(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT o.id, c.name, c.email, o.placed_on, o.status, o.eta, o.total_cents,
                        (SELECT COALESCE(SUM(quantity), 0) FROM order_items i WHERE i.order_id = o.id)
                 FROM orders o JOIN customers c ON c.id = o.customer_id
                 WHERE (?1 IS NULL OR c.email = ?1 COLLATE NOCASE)
                   AND (?2 IS NULL OR c.name LIKE '%' || ?2 || '%')
                   AND (?3 IS NULL OR o.status = ?3)
                 ORDER BY o.placed_on DESC, o.id DESC
                 LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![email, name, status, MAX_FOUND_ORDERS as i64],
                |row| {
                    Ok(OrderSummary {
                        order_id: row.get(0)?,
                        customer: CustomerRef {
                            name: row.get(1)?,
                            email: row.get(2)?,
                        },
                        placed_on: row.get(3)?,
                        status: row.get(4)?,
                        eta: row.get(5)?,
                        total: dollars(row.get(6)?),
                        item_count: row.get(7)?,
                    })
                },
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        if orders.is_empty() {
            let who = email.or(name).unwrap_or_default();
            let which = status.map(|s| format!(" {s}")).unwrap_or_default();
            return Ok(tool_error(format!(
                "No{which} orders were found for \"{who}\". Check the spelling, or ask for the order number."
            )));
        }
        structured(&json!({ "orders": orders, "count": orders.len() }))
    }

    /// Customers matching an email or a name, with their order counts.
    #[tool(
        description = "Look up customers by email or name: contact details, city, loyalty tier and number of orders. Several customers can share a name.",
        annotations(title = "Get customer", read_only_hint = true)
    )]
    fn get_customer(
        &self,
        Parameters(params): Parameters<GetCustomerParams>,
    ) -> Result<CallToolResult, McpError> {
        let email = given(params.email.as_ref()).map(str::to_owned);
        let name = given(params.name.as_ref()).map(str::to_owned);
        if email.is_none() && name.is_none() {
            return Ok(tool_error("Give the customer's email or name."));
        }
        let customers = self.with_db(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.id, c.name, c.email, c.phone, c.city, c.loyalty_tier,
                        (SELECT COUNT(*) FROM orders o WHERE o.customer_id = c.id)
                 FROM customers c
                 WHERE (?1 IS NULL OR c.email = ?1 COLLATE NOCASE)
                   AND (?2 IS NULL OR c.name LIKE '%' || ?2 || '%')
                 ORDER BY c.id",
            )?;
            let rows = stmt.query_map(params![email, name], |row| {
                Ok(Customer {
                    customer_id: row.get(0)?,
                    name: row.get(1)?,
                    email: row.get(2)?,
                    phone: row.get(3)?,
                    city: row.get(4)?,
                    loyalty_tier: row.get(5)?,
                    order_count: row.get(6)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        if customers.is_empty() {
            let who = email.or(name).unwrap_or_default();
            return Ok(tool_error(format!(
                "No customer matches \"{who}\". Check the spelling of the email or name."
            )));
        }
        structured(&json!({ "customers": customers, "count": customers.len() }))
    }

    /// Cancels an order that is still processing. A write: confirm with the caller first.
    #[tool(
        description = "Cancel an order that is still processing (not yet shipped), recording the caller's reason. This changes the order: confirm the order number with the caller before calling.",
        annotations(
            title = "Cancel order",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true
        )
    )]
    fn cancel_order(
        &self,
        Parameters(CancelOrderParams { order_id, reason }): Parameters<CancelOrderParams>,
    ) -> Result<CallToolResult, McpError> {
        let reason = reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Ok(tool_error(
                "Give a reason for the cancellation, between 1 and 500 characters.",
            ));
        }
        let outcome = self.with_db(|conn| {
            // The status check and the update are one statement, so two
            // concurrent cancels cannot both see "processing".
            let changed = conn.execute(
                "UPDATE orders SET status = 'cancelled', eta = NULL, cancel_reason = ?2
                 WHERE id = ?1 AND status = 'processing'",
                params![order_id, reason],
            )?;
            let order = Self::load_order(conn, order_id)?;
            Ok((changed, order))
        })?;
        match outcome {
            (_, None) => Ok(tool_error(format!(
                "No order {order_id} was found, so nothing was cancelled. Ask the caller to check the number."
            ))),
            (1, Some(order)) => {
                tracing::info!(order_id, message = "Order cancelled.");
                structured(&json!({
                    "cancelled": true,
                    "order": order,
                    "refund": format!("{} released to the original payment method; it shows in 3 to 5 business days.", order.total),
                }))
            }
            (_, Some(order)) => {
                let why = match order.status.as_str() {
                    "cancelled" => "it was already cancelled".to_owned(),
                    "shipped" | "out_for_delivery" => format!(
                        "it has already shipped with {}; it can be returned within 30 days of delivery instead",
                        order.carrier.as_deref().unwrap_or("the carrier")
                    ),
                    "delivered" => "it has already been delivered; it can be returned within 30 days of delivery instead".to_owned(),
                    "returned" => "it has already been returned and refunded".to_owned(),
                    other => format!("its status is {other}"),
                };
                Ok(tool_error(format!("Order {order_id} cannot be cancelled: {why}.")))
            }
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for OrdersServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(rmcp::model::Implementation::new(
            "parlor-mcp-orders",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Orders and customers of the shop. Look orders up with get_order (by number) or \
             find_orders (by email or name); cancel_order changes data, so confirm first. \
             Dates are ISO (YYYY-MM-DD); money is US dollars.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(SCHEMA_URI, "schema")
                .with_title("Orders database schema")
                .with_description(
                    "The SQL tables behind the tools: customers, orders, order_items.",
                )
                .with_mime_type("application/sql"),
            Resource::new(STATUSES_URI, "statuses")
                .with_title("Order statuses")
                .with_description("What each order status means, and which can be cancelled.")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let contents = match request.uri.as_str() {
            SCHEMA_URI => {
                let sql = self.with_db(|conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid",
                    )?;
                    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })?;
                ResourceContents::text(sql.join(";\n\n") + ";\n", SCHEMA_URI)
                    .with_mime_type("application/sql")
            }
            STATUSES_URI => {
                let statuses: serde_json::Map<_, _> = OrderStatus::ALL
                    .iter()
                    .map(|s| (s.as_str().to_owned(), json!(s.meaning())))
                    .collect();
                ResourceContents::text(
                    serde_json::to_string_pretty(&statuses).unwrap_or_default(),
                    STATUSES_URI,
                )
                .with_mime_type("application/json")
            }
            other => {
                return Err(McpError::resource_not_found(
                    format!("no resource {other}; this server has {SCHEMA_URI} and {STATUSES_URI}"),
                    Some(json!({ "uri": other })),
                ))
            }
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// Serves the orders database at `db_path` over stdin/stdout until the
/// client closes the pipe or `shutdown` resolves.
///
/// # Errors
/// When the database cannot be opened or seeded, or the MCP handshake fails.
pub async fn serve_stdio(
    db_path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let conn = open_or_seed(db_path)?;
    tracing::info!(db = %db_path.display(), message = "Orders server started on stdio.");
    super::serve_stdio(OrdersServer::new(conn), "orders", shutdown).await
}
