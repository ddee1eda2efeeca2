// node-postgres side of pgwarden's driver matrix (tests/e2e/test_driver_matrix.py).
//
//   node scenario.js SCENARIO '{"host": ..., "port": ..., "user": ..., "database": ...,
//                               "password": ..., "application_name": ...}'
//
// Runs one scenario against that server (PostgreSQL itself or pgwarden in front of it) and
// prints one JSON object with what the driver saw; the Python test asserts on it.
'use strict'

const pg = require('pg')

const [scenario, configText] = process.argv.slice(2)
const config = { ...JSON.parse(configText), connectionTimeoutMillis: 5000 }

async function connect () {
  const client = new pg.Client(config)
  await client.connect()
  return client
}

async function one (client, sql, values) {
  const result = await client.query({ text: sql, values, rowMode: 'array' })
  return result.rows[0][0]
}

// Resolves once the cancel connection is closed: by then the server has acted on it.
function cancel (client, query) {
  return new Promise((resolve, reject) => {
    const canceller = new pg.Client(config)
    canceller.connection.once('end', resolve)
    canceller.connection.once('error', reject)
    canceller.cancel(client, query)
  })
}

// Polls the server (never sleeping blind) until our pg_sleep is running.
async function awaitRunning (watcher) {
  const deadline = Date.now() + 5000
  while (Date.now() < deadline) {
    const running = await one(
      watcher,
      "select count(*)::int from pg_stat_activity where application_name = $1" +
        " and state = 'active' and query like 'select pg_sleep%'",
      [config.application_name]
    )
    if (running > 0) return
    await new Promise((resolve) => setTimeout(resolve, 10)) // polling interval
  }
  throw new Error('the statement to cancel never started')
}

function submit (client, sql) {
  const query = new pg.Query(sql)
  const done = new Promise((resolve) => {
    query.on('end', () => resolve('ok'))
    query.on('error', (err) => resolve(err.code))
  })
  client.query(query)
  return { query, done }
}

async function next (client, sql) {
  try {
    const result = await client.query({ text: sql, rowMode: 'array' })
    return result.rows[0][1]
  } catch (err) {
    return err.code
  }
}

const scenarios = {
  async pid (client) {
    return { driver_pid: client.processID, server_pid: await one(client, 'select pg_backend_pid()') }
  },

  // Who the session is and whether the server's own leg is encrypted (pg_stat_ssl).
  async whoami (client) {
    return {
      user: await one(client, 'select current_user::text'),
      server_ssl: await one(client, 'select ssl from pg_stat_ssl where pid = pg_backend_pid()'),
      driver_pid: client.processID,
      server_pid: await one(client, 'select pg_backend_pid()')
    }
  },

  async prepared (client) {
    const values = []
    for (const i of [1, 2, 3]) {
      const result = await client.query({
        name: 'double_it', text: 'select $1::int * 2', values: [i], rowMode: 'array'
      })
      values.push(result.rows[0][0])
    }
    const serverPrepared = await one(
      client, 'select count(*)::int from pg_prepared_statements where not from_sql'
    )
    return { values, server_prepared: serverPrepared }
  },

  async batch (client) {
    // One Query message with several statements: node-postgres's batch.
    const results = await client.query(
      'create temp table batch_t(id int primary key, v text);' +
        " insert into batch_t values (1, 'a'); insert into batch_t values (2, 'b');" +
        " insert into batch_t values (3, 'c');" +
        " select string_agg(id || v, ',' order by id) from batch_t"
    )
    return {
      commands: results.map((r) => r.command),
      rows: results[results.length - 1].rows[0].string_agg
    }
  },

  async transaction (client) {
    await client.query('create temp table tx_t(id int primary key)')
    await client.query('begin')
    await client.query('insert into tx_t values (1)')
    await client.query('savepoint s')
    let duplicate = 'no error'
    try {
      await client.query('insert into tx_t values (1)')
    } catch (err) {
      duplicate = err.code
    }
    await client.query('rollback to savepoint s')
    await client.query('insert into tx_t values (2)')
    await client.query('commit')
    await client.query('begin')
    await client.query('insert into tx_t values (3)')
    await client.query('rollback')
    return { duplicate, rows: await one(client, "select string_agg(id::text, ',' order by id) from tx_t") }
  },

  async notify (client) {
    const channel = 'chan_' + config.application_name
    const seen = []
    const arrived = new Promise((resolve) => {
      client.on('notification', (msg) => {
        seen.push({
          channel: msg.channel === channel ? '<ours>' : msg.channel,
          payload: msg.payload,
          pid: msg.processId
        })
        resolve()
      })
    })
    await client.query('listen ' + channel)
    await client.query('notify ' + channel + ", 'hello'")
    await Promise.race([arrived, new Promise((resolve) => setTimeout(resolve, 5000))])
    return {
      notifications: seen,
      driver_pid: client.processID,
      server_pid: await one(client, 'select pg_backend_pid()')
    }
  },

  async cancel (client) {
    const watcher = await connect()
    try {
      const first = submit(client, 'select pg_sleep(30)')
      await awaitRunning(watcher)
      const started = Date.now()
      await cancel(client, first.query)
      const outcome = await first.done
      return {
        first: outcome,
        seconds: (Date.now() - started) / 1000,
        next: await next(client, "select 1, 'next'")
      }
    } finally {
      await watcher.end()
    }
  },

  async cancel_then_next (client) {
    const watcher = await connect()
    try {
      const first = submit(client, 'select pg_sleep(0.3)')
      await awaitRunning(watcher)
      await cancel(client, first.query)
      const outcome = await first.done
      return { first: outcome, next: await next(client, "select pg_sleep(1.5), 'next'") }
    } finally {
      await watcher.end()
    }
  }
}

async function main () {
  const run = scenarios[scenario]
  if (run === undefined) throw new Error('unknown scenario ' + scenario)
  const client = await connect()
  try {
    process.stdout.write(JSON.stringify(await run(client)) + '\n')
  } finally {
    await client.end()
  }
}

main().catch((err) => {
  process.stderr.write((err && err.stack) || String(err))
  process.exit(1)
})
