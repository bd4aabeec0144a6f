-- The README demo: `laminardb run examples/demo.sql` (or ./scripts/demo.sh).
-- A generated trades feed, a filtered stream printed to the console, an incremental
-- aggregate, and a final ad-hoc query over its result.

CREATE SOURCE trades (
    symbol VARCHAR NOT NULL,
    price  DOUBLE,
    volume BIGINT,
    ts     TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
    connector = 'datagen',
    'rows_per_second' = '50000',
    'max_rows' = '200000',
    'seed' = '42',
    'fields.symbol.values' = 'AAPL,MSFT,GOOG,AMZN',
    'fields.price.min' = '100',
    'fields.price.max' = '200',
    'fields.volume.min' = '1',
    'fields.volume.max' = '1000'
);

CREATE STREAM whales AS
    SELECT symbol, ROUND(price, 2) AS price, volume FROM trades WHERE volume > 990 AND price > 199.5;

CREATE MATERIALIZED VIEW summary AS
    SELECT symbol, COUNT(*) AS trades, ROUND(AVG(price), 2) AS avg_price, MAX(price) AS max_price,
           SUM(volume) AS volume
    FROM trades GROUP BY symbol;

CREATE SINK whale_alerts AS SELECT * FROM whales WITH (connector = 'console');

SELECT * FROM summary ORDER BY symbol;
