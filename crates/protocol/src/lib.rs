//! n0m1-protocol: the components that talk through the LLM tables — `config_daemon`,
//! `command_daemon`, and (behind the `Generator` trait, so this crate never compiles candle)
//! the processor and nano instance loops. `llm_tables` is the one owner of the model loop's
//! tables (notifications, `llm_io_config`, output tables); `tables` guards every table name
//! that comes from data; `window` holds the statistics a nano instance, the checker and the
//! alerter share.

pub mod alerting;
pub mod checker;
pub mod cli;
pub mod command_daemon;
pub mod config_daemon;
pub mod generator;
pub mod llm_tables;
pub mod model_service;
pub mod nano;
pub mod processor;
pub mod runtime;
pub mod tables;
pub mod window;

/// What the unit tests of this crate share: a migrated in-memory database with the default
/// rows, and reading a column of text.
#[cfg(test)]
pub(crate) mod testing {
    use rusqlite::Connection;

    pub fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        n0m1_core::schema::migrations()
            .to_latest(&mut conn)
            .unwrap();
        n0m1_core::defaults::insert_defaults(&conn).unwrap();
        conn
    }

    pub fn texts(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}
