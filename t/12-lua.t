# lua-compat: resty.modelroute from Debian's libnginx-mod-http-lua.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $mods = '/usr/lib/nginx/modules';
for my $so ("$mods/ndk_http_module.so", "$mods/ngx_http_lua_module.so") {
    plan skip_all => "lua-nginx-module is not installed ($so missing): "
        . "apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson"
        unless -f $so;
}
plan skip_all => 'lua-cjson is not installed: apt-get install lua-cjson'
    unless -f '/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so'
        || glob('/usr/lib/*/lua/5.1/cjson.so');

my $lib = "$MR::Test::ROOT/lua-compat/lib";

# The typical use: an auth layer in access_by_lua picks the account (here
# from a header a real deployment would get from its own session or JWT),
# then content_by_lua submits and reads on its behalf.
my $http = <<EOF;
lua_package_path "$lib/?.lua;;";
modelroute_store %%STORE%%;
modelroute_model demo-chat per_request=0.04;
init_by_lua_block {
    local mr = require "resty.modelroute"
    local ok, err = mr.balance("org_000000000000000000000000")
    init_err = err
}
server {
    listen 127.0.0.1:%%PORT%%;
    location /_modelroute/ { internal; modelroute_lua; }
    location /_exposed/ { modelroute_lua; }
    location /admin/ { modelroute_admin; }
    location /v1/ { modelroute_api; }

    location /app/ {
        access_by_lua_block {
            local acct = ngx.var.http_x_app_account
            if not acct then
                return ngx.exit(ngx.HTTP_UNAUTHORIZED)
            end
            ngx.ctx.account = acct
        }
        content_by_lua_block {
            local mr = require "resty.modelroute"
            local cjson = require "cjson"
            local op = ngx.var.uri:match("^/app/(.+)\$")
            local a = ngx.ctx.account
            local res, err, info

            ngx.req.read_body()
            local body = ngx.req.get_body_data()
            local p = body and cjson.decode(body) or {}

            if op == "create" then
                res, err, info = mr.create(a, p)
            elseif op == "get" then
                res, err, info = mr.get(a, p.id)
            elseif op == "result" then
                res, err, info = mr.result(a, p.id)
            elseif op == "list" then
                res, err, info = mr.list(a, p)
            elseif op == "cancel" then
                res, err, info = mr.cancel(a, p.id)
            elseif op == "balance" then
                res, err, info = mr.balance(a)
            elseif op == "credit" then
                res, err, info = mr.credit(a, p.amount, p.reference)
            elseif op == "init" then
                err = init_err
            end

            ngx.say(cjson.encode({ res = res or cjson.null,
                                   err = err or cjson.null,
                                   info = info or cjson.null }))
        }
    }
    location = /timer {
        content_by_lua_block {
            local mr = require "resty.modelroute"
            local acct = ngx.var.arg_account
            local done = false
            ngx.timer.at(0, function()
                local _, err = mr.balance(acct)
                ngx.shared.mr_test:set("timer_err", err)
            end)
            ngx.say("ok")
        }
    }
    location = /timer_err {
        content_by_lua_block {
            ngx.say(ngx.shared.mr_test:get("timer_err") or "")
        }
    }
}
lua_shared_dict mr_test 1m;
EOF

my $t = MR::Test->new(
    http => $http,
    extra_main => "load_module $mods/ndk_http_module.so;\n"
        . "load_module $mods/ngx_http_lua_module.so;",
);
$t->start;

my $acc = $t->new_account(credit => '1.00');
my $org = $acc->{org};

sub app {
    my ($op, $body, $account) = @_;
    my $r = $t->req(POST => "/app/$op",
        { 'X-App-Account' => $account // $org }, $body // {});
    is($r->{status}, 200, "app/$op answers") or diag $r->{body};
    return $r->{json} // {};
}

# ---- create, with the same validation, hold and idempotency as HTTP
my $body = { model => 'demo-chat', input => { prompt => 'hi' },
    idempotency_key => 'lua-1', metadata => { via => 'lua' } };
my $c = app(create => $body);
my $e = $c->{res};
ok(ref $e eq 'HASH' && $e->{id} =~ /^exec_[0-9a-f]{44}$/, 'create: an id')
    or diag explain $c;
is($e->{status}, 'PENDING', 'create: PENDING');
money_is($e->{hold_amount}, '0.048', 'create: the same hold as HTTP');
is($c->{info}{status}, 202, 'create: info.status 202');
ok(!$c->{info}{replayed}, 'create: not a replay');

my $again = app(create => $body);
is($again->{res}{id}, $e->{id}, 'same key: same execution');
ok($again->{info}{replayed}, 'same key: info.replayed');

my $reuse = app(create => { %$body, input => { prompt => 'other' } });
is($reuse->{res}, undef, 'same key, other body: nil');
like($reuse->{err}, qr/^IDEMPOTENCY_KEY_REUSED: /, 'err carries the code');
is($reuse->{info}{error}{code}, 'IDEMPOTENCY_KEY_REUSED',
    'info.error is the envelope');

# the client's own Idempotency-Key header is not the Lua call's
my $hk = $t->req(POST => '/app/create',
    { 'X-App-Account' => $org, 'Idempotency-Key' => 'from-the-client' },
    { model => 'demo-chat', input => { prompt => 'hdr' },
      idempotency_key => 'lua-hdr' });
is($hk->{json}{res}{idempotency_key}, 'lua-hdr',
    "a client's Idempotency-Key header does not reach mr.create")
    or diag $hk->{body};

my $bad = app(create => { model => 'nope', input => {},
    idempotency_key => 'lua-2' });
like($bad->{err}, qr/^INPUT_VALIDATION_ERROR: /, 'unknown model: 400 code');
ok(detail_for({ json => { error => $bad->{info}{error} } }, 'model'),
    'details name the field');


my $second = app(create => { model => 'demo-chat', input => {},
    idempotency_key => 'lua-3' });
is($second->{info}{status}, 202, 'a second execution');

# ---- the HTTP API sees the same execution
my $key = $acc->{key};
my $g = $t->get_exec($key, $e->{id});
is($g->{status}, 200, 'HTTP sees the Lua execution');
is($g->{json}{metadata}{via}, 'lua', 'with its metadata');

# ---- get, result, list, balance
my $got = app(get => { id => $e->{id} });
is($got->{res}{id}, $e->{id}, 'get');
my $res = app(result => { id => $e->{id} });
like($res->{err}, qr/^EXECUTION_NOT_COMPLETED: /, 'result of PENDING: 409');
is($res->{info}{status}, 409, 'result: status 409');
my $l = app(list => { limit => 1 });
is(scalar @{ $l->{res}{data} // [] }, 1, 'list limit 1');
ok($l->{res}{has_more}, 'list has_more');
my $nf = app(get => { id => 'exec_' . ('0' x 44) });
like($nf->{err}, qr/^NOT_FOUND: /, 'unknown id: NOT_FOUND');
my $bad_id = app(get => { id => '../admin' });
like($bad_id->{err}, qr/^NOT_FOUND: /, 'malformed id: NOT_FOUND');

my $b = app(balance => {});
money_is($b->{res}{held}, '0.144', 'balance: three holds');

# another account's execution is not found through Lua either
my $oth = $t->new_account(credit => '1.00');
my $x = app(get => { id => $e->{id} }, $oth->{org});
like($x->{err}, qr/^NOT_FOUND: /, "another account's id: NOT_FOUND");

# ---- cancel releases the hold
my $cn = app(cancel => { id => $e->{id} });
is($cn->{res}{status}, 'CANCELLED', 'cancel');
my $b2 = app(balance => {});
money_is($b2->{res}{held}, '0.096', 'cancel released its hold');

# ---- credit, idempotent by reference
my $cr = app(credit => { amount => '2.00', reference => 'inv-1' });
money_is($cr->{res}{balance}, '3.00', 'credit');
my $cr2 = app(credit => { amount => '2.00', reference => 'inv-1' });
ok($cr2->{info}{replayed}, 'credit replayed by reference');
money_is($cr2->{res}{balance}, '3.00', 'no second credit');
my $cr3 = app(credit => { amount => '5.00', reference => 'inv-1' });
like($cr3->{err}, qr/^IDEMPOTENCY_KEY_REUSED: /, 'reference reused: 409');
my $cr4 = app(credit => { amount => 'lots' });
like($cr4->{err}, qr/^INPUT_VALIDATION_ERROR: /, 'bad amount');

# ---- insufficient balance
my $big = $t->new_account(credit => '0.01');
my $nb = app(create => { model => 'demo-chat', input => {},
    idempotency_key => 'lua-4' }, $big->{org});
like($nb->{err}, qr/^INSUFFICIENT_BALANCE: /, '402 code');
is($nb->{info}{status}, 402, '402 status');

# ---- unknown or malformed account
my $ua = app(balance => {}, 'org_' . ('0' x 24));
like($ua->{err}, qr/^UNAUTHORIZED: /, 'unknown account');
my $ma = app(balance => {}, 'nobody');
like($ma->{err}, qr/^INPUT_VALIDATION_ERROR: /, 'malformed account');

# ---- phases: init_by_lua and timers fail with a clear error, no crash
my $init = app(init => {});
like($init->{err}, qr/^UNSUPPORTED_PHASE: .*\binit\b/, 'init_by_lua refused');
is($t->req(GET => "/timer?account=$org")->{status}, 200, 'timer started');
my $terr = wait_for(sub {
    my $v = $t->req(GET => '/timer_err')->{body};
    $v =~ /\S/ ? $v : undef;
}, 10);
like($terr // '', qr/^UNSUPPORTED_PHASE: .*\btimer\b/, 'timer refused');

# ---- the lua mount is not reachable by clients, even if not internal
for my $p ('/_modelroute', '/_exposed') {
    my $direct = $t->req(GET => "$p/v1/balance?mr_account=$org");
    is_error($direct, 404, 'NOT_FOUND', "client request to $p: 404");
    my $adm = $t->req(POST => "$p/admin/accounts/$org/credit", {},
        { amount => '100.00' });
    is_error($adm, 404, 'NOT_FOUND', "client credit through $p: 404");
}

ok($t->verify($org)->{ok}, 'ledger invariant');

$t->done;
