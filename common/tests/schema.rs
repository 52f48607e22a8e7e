//! `prepare_schema` on real PostgreSQL: what `--migrate=true` and
//! `--migrate=false` do with a schema that is empty, current, ahead of the
//! binary (a newer release migrated it), edited or half-applied.

use berth_common::db::{self, DbError, MIGRATOR};
use sqlx::PgPool;

fn latest() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap()
}

#[sqlx::test(migrations = false)]
async fn an_empty_schema_is_migrated_only_when_asked(pool: PgPool) {
    let refused = db::prepare_schema(&pool, false).await.unwrap_err();
    assert!(
        matches!(&refused, DbError::SchemaBehind { missing } if missing.len() == MIGRATOR.iter().count()),
        "{refused}"
    );
    assert!(refused.is_config());

    db::prepare_schema(&pool, true).await.unwrap();
    let level = db::schema_level(&pool).await.unwrap();
    assert_eq!(
        level,
        db::SchemaLevel::default(),
        "nothing missing any more"
    );
    db::prepare_schema(&pool, false).await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_newer_releases_migrations_are_tolerated_in_both_modes(pool: PgPool) {
    let newer = latest() + 1;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from a newer release', true, '\\x00', 0)",
    )
    .bind(newer)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(db::schema_level(&pool).await.unwrap().newer, vec![newer]);
    db::prepare_schema(&pool, false).await.unwrap();
    db::prepare_schema(&pool, true).await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_edited_or_half_applied_migration_is_a_configuration_error(pool: PgPool) {
    let version = latest();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = $1")
        .bind(version)
        .execute(&pool)
        .await
        .unwrap();
    for migrate in [false, true] {
        let e = db::prepare_schema(&pool, migrate).await.unwrap_err();
        assert!(matches!(e, DbError::SchemaEdited(v) if v == version), "{e}");
        assert!(e.is_config());
    }
    sqlx::query("UPDATE _sqlx_migrations SET success = false WHERE version = $1")
        .bind(version)
        .execute(&pool)
        .await
        .unwrap();
    let e = db::prepare_schema(&pool, true).await.unwrap_err();
    assert!(matches!(e, DbError::SchemaDirty(v) if v == version), "{e}");
    assert!(e.is_config());
}
