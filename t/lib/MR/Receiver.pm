package MR::Receiver;

# A webhook receiver for the tests: a small forking HTTP/1.1 server on
# 127.0.0.1:<port>, run in a child process. Every connection is handled by
# its own process, which records the request (method, target, headers,
# body, arrival time) as a JSON file in a directory the test reads, then
# answers as the rules say. It verifies nothing itself.
#
#   my $rc = MR::Receiver->new;          # picks a free port
#   $rc->start;
#   $rc->url('/hook')                    # http://127.0.0.1:<port>/hook
#   $rc->set('/hook', status => 500);    # or delay => 3, close => 1,
#                                        # headers => {Location => ...}
#   my @r = $rc->wait_requests(1, path => '/hook', timeout => 10);
#   my @s = $rc->requests_to('/hook');   # the same, without waiting
#   $rc->stop;  $rc->start;              # down, then up on the same port
#
# Rules live in a control file read by each connection when its request
# has arrived; a path without a rule uses the '*' rule, then 200.
#
# It also plays a fake AI provider, answering and failing as told:
#
#   $rc->set('/v1/chat', json => { choices => [...] });  # application/json
#   $rc->set('/v1/chat', content_type => 'application/json', body => '{}');
#   $rc->set('/v1/chat', trickle => 0.2);  # the answer 8 bytes at a time
#   $rc->set('/v1/chat', reset => 1);      # a TCP reset instead of answers
#   $rc->set('/v1/chat', truncate => 10);  # full Content-Length, 10 bytes
#   $rc->set('/v1/chat', sequence => [ { status => 503 }, { json => {} } ]);
#                                          # request k gets rule k, the
#                                          # last rule ever after
#   $rc->set('/v1/chat', json => {...}, cases => [ ['"model":"big"',
#       { body_bytes => 20_000 }] ]);      # by what the request body holds
#   $rc->set('/v1/chat', chunked => 1);    # Transfer-Encoding: chunked
#   $rc->set('/v1/chat', json => {...}, hold => 'h1');
#   ...                                    # requests wait, unanswered,
#   $rc->release('h1');                    # until the test lets them go
#
# The port comes from MR::Test::free_port: it stays ours while the
# receiver is stopped (connections are refused then), and a port that is
# never started is a port where nobody listens.
#
# A recorded request has its body decoded in {json} (and {event}) when
# the body is JSON.
#
# Helpers for the tests: signature_problems($req, $secret) checks both
# signatures of a delivery, resign_problems(@reqs) that the attempts of
# one event were each signed at their own time; wh_* speak the webhook API
# through MR::Test; wh_sync($t, $rc) returns once the sender has claimed
# after the call (what was due before and has not arrived was not sent).

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(hmac_sha256 hmac_sha256_hex);
use Fcntl qw(O_RDWR O_CREAT :flock);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64 qw(decode_base64 encode_base64);
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

use Exporter 'import';
our @EXPORT_OK = qw(signature_problems resign_problems secret_ok event_of
    wh_create wh_get wh_deliveries wh_delivery wh_exec_deliveries
    wait_delivery wh_sync chat_completion);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;
my @LIVE;

my %REASON = (200 => 'OK', 201 => 'Created', 202 => 'Accepted',
    204 => 'No Content', 301 => 'Moved Permanently', 302 => 'Found',
    400 => 'Bad Request', 404 => 'Not Found', 410 => 'Gone',
    429 => 'Too Many Requests', 500 => 'Internal Server Error',
    502 => 'Bad Gateway', 503 => 'Service Unavailable');

# A provider's chat completion (OpenAI's shape) for set(... json => ...):
# content 'ok', 3 prompt and 5 completion tokens unless %o says otherwise.
sub chat_completion {
    my (%o) = @_;
    return { id => 'c', object => 'chat.completion',
        choices => [ { index => 0, finish_reason => 'stop',
            message => { role => 'assistant',
                content => $o{content} // 'ok' } } ],
        usage => { prompt_tokens => $o{prompt_tokens} // 3,
            completion_tokens => $o{completion_tokens} // 5 } };
}

# ---------------------------------------------------------------- server

sub new {
    my ($class, %o) = @_;
    my $dir = tempdir('mr-recv-XXXXXX', TMPDIR => 1,
        CLEANUP => !$ENV{MR_KEEP});
    mkdir "$dir/req" or croak "mkdir $dir/req: $!";
    my $self = bless { dir => $dir, port => $o{port} // free_port(),
        owner => $$, rules => {} }, $class;
    $self->write_rules;
    return $self;
}

sub port { $_[0]{port} }
sub dir  { $_[0]{dir} }
sub running { $_[0]{pid} ? 1 : 0 }

sub url {
    my ($self, $path) = @_;
    return "http://127.0.0.1:$self->{port}" . ($path // '/');
}

sub free_port {
    require MR::Test;
    return MR::Test::free_port();
}

sub start {
    my ($self) = @_;
    croak 'receiver already running' if $self->{pid};
    my $ready = "$self->{dir}/ready";
    unlink $ready;
    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        my $ok = eval { $self->serve($ready); 1 };
        print STDERR "receiver: $@" unless $ok;
        POSIX::_exit($ok ? 0 : 1);
    }
    $self->{pid} = $pid;
    push @LIVE, $self unless grep { $_ == $self } @LIVE;
    my $deadline = time + 10;
    until (-e $ready) {
        if (time > $deadline || waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $self->{pid};
            croak "receiver did not start on port $self->{port}";
        }
        sleep 0.01;
    }
    return $self;
}

# Kills the server and every connection it holds; the port is closed
# (connections are refused) until start.
sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (time < $deadline) {
        my $w = waitpid($pid, POSIX::WNOHANG());
        return if $w == $pid || $w == -1;
        sleep 0.01;
    }
    kill 'KILL', -$pid;
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

sub DESTROY {
    my ($self) = @_;
    $self->stop if $self->{owner} == $$;
}

END {
    for my $rc (@LIVE) {
        $rc->stop if $rc->{owner} == $$;
    }
}

# The child: accept, fork a handler per connection.
sub serve {
    my ($self, $ready) = @_;
    @LIVE = ();
    $self->{owner} = -1;    # DESTROY in a child never stops anything
    POSIX::setpgid(0, 0);
    $SIG{$_} = 'DEFAULT' for qw(INT PIPE);
    $SIG{CHLD} = 'IGNORE';  # handlers are reaped by the kernel
    my %kids;
    my $quit = 0;
    $SIG{TERM} = sub { $quit = 1 };

    my $srv;
    for (1 .. 50) {
        $srv = IO::Socket::INET->new(Listen => 128, LocalAddr => '127.0.0.1',
            LocalPort => $self->{port}, Proto => 'tcp', ReuseAddr => 1)
            and last;
        sleep 0.1;    # the port of a previous run may still be closing
    }
    die "listen on $self->{port}: $!\n" unless $srv;
    open my $fh, '>', $ready or die "$ready: $!\n";
    close $fh;

    my $n = 0;
    until ($quit) {
        my $c = $srv->accept;
        last if $quit;
        next unless $c;
        $n++;
        my $pid = fork;
        if (!defined $pid) {
            close $c;
            next;
        }
        if (!$pid) {
            $SIG{$_} = 'DEFAULT' for qw(TERM CHLD);
            $SIG{PIPE} = 'IGNORE';
            close $srv;
            eval { $self->handle($c, $n) };
            POSIX::_exit(0);
        }
        close $c;
        $kids{$pid} = 1;
        delete @kids{ grep { !kill 0, $_ } keys %kids } if $n % 16 == 0;
    }
    close $srv;
    kill 'KILL', keys %kids;
    my $deadline = time + 3;
    while (time < $deadline && grep { kill 0, $_ } keys %kids) {
        sleep 0.01;
    }
}

# Reads from $c until $want->($buf) is true, EOF or the deadline.
sub read_until {
    my ($c, $bufref, $want, $deadline) = @_;
    until ($want->($$bufref)) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        my $rin = '';
        vec($rin, fileno($c), 1) = 1;
        my $k = select(my $rout = $rin, undef, undef, $left);
        next if $k < 0 && $!{EINTR};
        return 0 if $k <= 0;
        my $got = sysread($c, my $chunk, 65536);
        return 0 unless $got;
        $$bufref .= $chunk;
    }
    return 1;
}

sub handle {
    my ($self, $c, $n) = @_;
    binmode $c;
    my $conn = sprintf '%.6f', time;
    my $buf = '';
    my $deadline = time + 30;
    my $rec = { conn => $n, accepted => $conn + 0 };

    my $head_ok = read_until($c, \$buf, sub { $_[0] =~ /\r?\n\r?\n/ },
        $deadline);
    my ($head, $rest) = split /\r?\n\r?\n/, $buf, 2;
    my ($line, @hl) = split /\r?\n/, $head // '';
    unless ($head_ok && defined $line
        && $line =~ m{^([A-Z]+) (\S+) HTTP/(1\.[01])$}) {
        # not HTTP (a TLS hello, say) or nothing at all
        $rec->{raw_hex} = unpack 'H*', substr($buf, 0, 64);
        $rec->{raw_length} = length $buf;
        $rec->{arrived} = time;
        $self->record($rec);
        return;
    }
    my ($method, $target, $ver) = ($1, $2, $3);
    my (%h, @list);
    for my $l (@hl) {
        my ($k, $v) = $l =~ /^([^:]+):[ \t]*(.*?)[ \t]*$/ or next;
        push @list, [$k, $v];
        $k = lc $k;
        $h{$k} = exists $h{$k} ? "$h{$k}, $v" : $v;
    }
    if (($h{expect} // '') =~ /100-continue/i) {
        syswrite $c, "HTTP/1.1 100 Continue\r\n\r\n";
    }
    my $body = $rest // '';
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $raw = $body;
        read_until($c, \$raw, sub { $_[0] =~ /(?:^|\r\n)0\r\n(?:.*?\r\n)?\r\n/s },
            $deadline);
        $body = '';
        while ($raw =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $body .= substr($raw, 0, $len, '');
            $raw =~ s/^\r\n//;
        }
    } elsif (defined $h{'content-length'}) {
        my $len = $h{'content-length'} =~ /^(\d+)/ ? $1 : 0;
        read_until($c, \$body, sub { length $_[0] >= $len }, $deadline);
        $body = substr($body, 0, $len);
    }
    my ($path, $query) = split /\?/, $target, 2;
    my $rule = $self->pick($self->rule_for($path), $body);
    my %shown = %$rule;
    $shown{body} = length($shown{body}) . ' bytes' if defined $shown{body};
    %$rec = (%$rec, method => $method, target => $target, path => $path,
        query => $query, version => $ver, headers => \%h,
        header_list => \@list, body => $body, arrived => time + 0,
        rule => \%shown);
    my $file = $self->record($rec);

    if (defined $rule->{hold}) {
        my $until = time + 120;
        sleep 0.01 until -e $self->release_file($rule->{hold}) || time > $until;
        $rec->{released_at} = time + 0;
    }
    sleep $rule->{delay} if $rule->{delay};
    if ($rule->{close} || $rule->{reset}) {
        reset_linger($c) if $rule->{reset};
        $rec->{ $rule->{reset} ? 'reset_at' : 'closed_at' } = time + 0;
        $self->record($rec, $file);
        close $c;
        return;
    }
    my ($status, $out) = answer($rule);
    my $wrote = $rule->{trickle}
        ? trickle($c, $out, $rule->{trickle}, $rule->{trickle_bytes} || 8)
        : write_all($c, $out);
    $rec->{answered_at} = time + 0;
    $rec->{answered} = $wrote ? $status : undef;
    $rec->{truncated} = $rule->{truncate} + 0 if defined $rule->{truncate};
    $self->record($rec, $file);
    shutdown $c, 1;
    # let the client read before the socket goes away
    read_until($c, \my $drain, sub { 0 }, time + 1);
    close $c;
}

# The status and the bytes of the answer a rule asks for; with
# truncate => N the head announces the whole body but only N bytes of it
# follow.
sub answer {
    my ($rule) = @_;
    my $status = $rule->{status} // 200;
    my $nobody = $status =~ /^(?:1\d\d|204|304)$/;
    my $type = $rule->{content_type} // 'text/plain';
    my $rbody = $nobody ? ''
        : $rule->{body_bytes} ? 'x' x $rule->{body_bytes}
        : $rule->{body} // "ok\n";
    my $chunked = $rule->{chunked} && !$nobody;
    my $out = "HTTP/1.1 $status " . ($REASON{$status} // 'Status') . "\r\n"
        . "Content-Type: $type\r\nConnection: close\r\n"
        . ($nobody ? ''
            : $chunked ? "Transfer-Encoding: chunked\r\n"
            : "Content-Length: " . length($rbody) . "\r\n");
    my $extra = $rule->{headers} // {};
    $out .= "$_: $extra->{$_}\r\n" for sort keys %$extra;
    $rbody = substr($rbody, 0, $rule->{truncate})
        if defined $rule->{truncate} && $rule->{truncate} < length $rbody;
    $rbody = chunk_encode($rbody) if $chunked;
    return ($status, "$out\r\n$rbody");
}

# $data in chunks of 16 KB, then the last chunk.
sub chunk_encode {
    my ($data) = @_;
    my $out = '';
    for (my $off = 0; $off < length $data; $off += 16384) {
        my $piece = substr($data, $off, 16384);
        $out .= sprintf("%x\r\n", length $piece) . "$piece\r\n";
    }
    return "${out}0\r\n\r\n";
}

# Writes all of $data; false when the peer went away first.
sub write_all {
    my ($c, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $k = syswrite $c, $data, length($data) - $off, $off;
        next if !defined $k && $!{EINTR};
        return 0 unless $k;
        $off += $k;
    }
    return 1;
}

# Writes $data $bytes at a time, sleeping $pause seconds between pieces.
sub trickle {
    my ($c, $data, $pause, $bytes) = @_;
    for (my $off = 0; $off < length $data; $off += $bytes) {
        sleep $pause if $off;
        write_all($c, substr($data, $off, $bytes)) or return 0;
    }
    return 1;
}

# Makes close() abort the connection with a RST instead of a FIN.
sub reset_linger {
    my ($c) = @_;
    setsockopt($c, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
}

# Writes a record atomically; file names sort by arrival time.
sub record {
    my ($self, $rec, $file) = @_;
    $file //= sprintf '%s/req/%017.6f-%07d.json', $self->{dir},
        $rec->{arrived} // time, $$;
    my $tmp = "$file.$$.tmp";
    open my $fh, '>', $tmp or return $file;
    print $fh $JSON->encode($rec);
    close $fh;
    rename $tmp, $file;
    return $file;
}

# ---------------------------------------------------------------- rules

sub write_rules {
    my ($self) = @_;
    my $f = "$self->{dir}/rules.json";
    open my $fh, '>', "$f.tmp" or croak "$f.tmp: $!";
    print $fh $JSON->encode($self->{rules});
    close $fh;
    rename "$f.tmp", $f or croak "rename $f: $!";
}

sub rule_for {
    my ($self, $path) = @_;
    my $rules = {};
    if (open my $fh, '<', "$self->{dir}/rules.json") {
        local $/;
        $rules = eval { $JSON->decode(<$fh>) } // {};
    }
    return $rules->{$path} // $rules->{'*'} // {};
}

# The rule a request is answered by: the first of its cases whose text
# the request body holds (with the keys given beside the cases as
# defaults, and case => i), then the k-th element of a sequence (likewise,
# with seq => k) for the k-th request, the last one past the end;
# json => ... becomes the body.
sub pick {
    my ($self, $rule, $body) = @_;
    if (ref $rule->{cases} eq 'ARRAY') {
        my %base = %$rule;
        my $cases = delete $base{cases};
        $rule = \%base;
        for my $i (0 .. $#$cases) {
            my ($text, $r) = @{ $cases->[$i] };
            next unless index($body // '', $text) >= 0;
            $rule = { %base, %$r, case => $i };
            last;
        }
    }
    if (ref $rule->{sequence} eq 'ARRAY' && @{ $rule->{sequence} }) {
        my %base = %$rule;
        my $seq = delete $base{sequence};
        my $k = $self->next_in_sequence(delete $base{sequence_id});
        my $i = $k <= @$seq ? $k - 1 : $#$seq;
        $rule = { %base, %{ $seq->[$i] // {} }, seq => $k };
    }
    if (exists $rule->{json}) {
        $rule = { %$rule, body => $JSON->encode($rule->{json}) };
        $rule->{content_type} //= 'application/json';
    }
    return $rule;
}

# Counts the requests of a sequence, across connections (each is its own
# process): 1 for the first. The count lives in a file, under flock.
sub next_in_sequence {
    my ($self, $id) = @_;
    my $f = "$self->{dir}/seq-" . ($id // 0);
    sysopen my $fh, $f, O_RDWR | O_CREAT or die "$f: $!\n";
    flock $fh, LOCK_EX or die "flock $f: $!\n";
    sysread $fh, my $n, 64;
    $n = ($n // '') =~ /^(\d+)/ ? $1 + 1 : 1;
    sysseek $fh, 0, 0;
    truncate $fh, 0;
    syswrite $fh, "$n\n";
    close $fh;
    return $n;
}

# set($path, %rule) answers the requests to $path by the rule:
#   status => N            the status (200)
#   body => '...'          the answer body ("ok\n")
#   body_bytes => N        an answer body of N bytes instead
#   json => $data          the body is $data as JSON; content_type then
#                          defaults to application/json
#   content_type => '...'  the Content-Type (text/plain)
#   headers => {...}       more header lines
#   delay => seconds       a pause before answering (or closing)
#   hold => 'name'         no answer until release('name') (at most
#                          120 s); set() with a hold makes it hold again
#   close => 1             close the connection without answering
#   reset => 1             abort the connection with a TCP reset (SO_LINGER
#                          on, linger 0, then close) without answering
#   truncate => N          announce the whole body in Content-Length but
#                          send only its first N bytes, then close
#   trickle => seconds     send the answer (head, then body) 8 bytes at a
#                          time (trickle_bytes => N for N), sleeping that
#                          long between pieces; Content-Length stays right
#   chunked => 1           send the body with Transfer-Encoding: chunked
#                          (16 KB chunks), without Content-Length
#   cases => [[$text, \%r], ...]
#                          a request whose body holds $text gets rule %r
#                          (the first such case; the other keys given are
#                          defaults for it); the record's rule has case => i
#   sequence => [\%r1, \%r2, ...]
#                          the k-th request to $path (from 1, across all
#                          connections) gets rule k, those past the end
#                          the last one; the other keys given are defaults
#                          for every element; the record's rule has seq => k.
#                          Every set() starts a sequence's count afresh.
# set($path) goes back to 200. $path '*' is the default for paths without
# a rule (a '*' sequence counts all the requests it answers).
sub set {
    my ($self, $path, %rule) = @_;
    my @holds = grep { defined } $rule{hold},
        map { $_->{hold} } @{ ref $rule{sequence} eq 'ARRAY'
            ? $rule{sequence} : [] };
    for my $h (@holds) {
        croak "hold names are [A-Za-z0-9_-]+: $h" unless $h =~ /^[\w-]+$/;
        unlink $self->release_file($h);
    }
    if (exists $rule{sequence}) {
        croak 'sequence wants a list of rule hashes'
            unless ref $rule{sequence} eq 'ARRAY' && @{ $rule{sequence} }
            && !grep { ref $_ ne 'HASH' } @{ $rule{sequence} };
        $rule{sequence_id} = ++$self->{sequences};
    }
    if (%rule) {
        $self->{rules}{$path} = \%rule;
    } else {
        delete $self->{rules}{$path};
    }
    $self->write_rules;
}

# Lets the requests held by hold => $name be answered (now and after).
sub release {
    my ($self, $name) = @_;
    open my $fh, '>', $self->release_file($name)
        or croak "release $name: $!";
    close $fh;
}

sub release_file { "$_[0]{dir}/release-$_[1]" }

# ---------------------------------------------------------------- records

# Every connection, in order of arrival, including those that sent no
# HTTP request (method undef, raw_hex the first bytes).
sub connections {
    my ($self) = @_;
    opendir my $dh, "$self->{dir}/req" or return;
    my @files = sort grep { /\.json$/ } readdir $dh;
    my $cache = $self->{cache} //= {};
    my @out;
    for my $f (@files) {
        my $path = "$self->{dir}/req/$f";
        my $size = -s $path // next;
        my $c = $cache->{$f};
        unless ($c && $c->[0] == $size) {
            open my $fh, '<', $path or next;
            local $/;
            my $r = eval { $JSON->decode(<$fh>) } or next;
            $r->{file} = $f;
            if (defined $r->{method}) {
                $r->{event} = eval { $JSON->decode($r->{body}) };
                my $ok = eval { $r->{json} = $JSON->decode($r->{body}); 1 };
                delete $r->{json} unless $ok;
            }
            $c = $cache->{$f} = [ $size, $r ];
        }
        push @out, { %{ $c->[1] } };
    }
    return @out;
}

# Requests (path => '/x' filters), in order of arrival; each has its
# decoded body in {json} and {event} when it is JSON.
sub requests {
    my ($self, %f) = @_;
    my @r = grep { defined $_->{method} } $self->connections;
    @r = grep { $_->{path} eq $f{path} } @r if defined $f{path};
    return @r;
}

# The requests to $path, in order of arrival.
sub requests_to {
    my ($self, $path) = @_;
    return $self->requests(path => $path);
}

# Waits until at least $n requests (matching path => and where => sub)
# have arrived; returns them, or () at the deadline.
sub wait_requests {
    my ($self, $n, %f) = @_;
    my $deadline = time + ($f{timeout} // 15);
    while (1) {
        my @r = $self->requests(path => $f{path});
        @r = grep { $f{where}->($_) } @r if $f{where};
        return @r if @r >= $n;
        return () if time > $deadline;
        sleep 0.02;
    }
}

sub count {
    my ($self, %f) = @_;
    my @r = $self->requests(path => $f{path});
    @r = grep { $f{where}->($_) } @r if $f{where};
    return scalar @r;
}

sub clear {
    my ($self) = @_;
    delete $self->{cache};
    opendir my $dh, "$self->{dir}/req" or return;
    unlink map { "$self->{dir}/req/$_" } grep { /\.json$/ } readdir $dh;
}

# ---------------------------------------------------------------- checks

# The event a request carries (its decoded body), or undef.
sub event_of {
    my ($req) = @_;
    return eval { $JSON->decode($req->{body}) };
}

# True for "whsec_" + base64 of 32 bytes.
sub secret_ok {
    my ($s) = @_;
    return 0 unless defined $s && !ref $s
        && $s =~ m{^whsec_([A-Za-z0-9+/]+={0,2})$};
    my $b64 = $1;
    return length($b64) % 4 == 0 && length(decode_base64($b64)) == 32;
}

# Both signatures of a delivery checked against the secret; returns the
# problems (none when both are valid).  The timestamps are no later than
# the arrival and within the 5 minutes receivers commonly accept (that a
# retry is signed anew, not with the event's first timestamp, is
# resign_problems' check: it does not depend on how fast anything is).
sub signature_problems {
    my ($req, $secret) = @_;
    my @p;
    my $h = $req->{headers} // {};
    my $body = $req->{body} // '';
    my $now = $req->{arrived} // time;
    my $stale = sub { $_[0] > $now + 1e-3 || $_[0] < $now - 300 };

    my $ts = $h->{'x-signature-timestamp'};
    if (!defined $ts || $ts !~ /^\d+$/) {
        push @p, 'X-Signature-Timestamp missing or not unix seconds: '
            . ($ts // 'undef');
    } else {
        push @p, "X-Signature-Timestamp $ts is not the attempt's time ($now)"
            if $stale->($ts);
        my $want = hmac_sha256_hex("$ts.$body", $secret);
        my $got = $h->{'x-signature'} // '';
        push @p, "X-Signature '$got', want '$want'" unless lc $got eq $want;
    }

    my $id = $h->{'webhook-id'};
    my $wts = $h->{'webhook-timestamp'};
    push @p, 'webhook-id missing' unless defined $id && length $id;
    if (!defined $wts || $wts !~ /^\d+$/) {
        push @p, 'webhook-timestamp missing or not unix seconds: '
            . ($wts // 'undef');
    } else {
        push @p, "webhook-timestamp $wts is not the attempt's time ($now)"
            if $stale->($wts);
    }
    if (defined $id && defined $wts) {
        (my $b64 = $secret) =~ s/^whsec_//;
        my $key = decode_base64($b64);
        my $want = 'v1,'
            . encode_base64(hmac_sha256("$id.$wts.$body", $key), '');
        my @got = split ' ', $h->{'webhook-signature'} // '';
        push @p, "webhook-signature '"
            . ($h->{'webhook-signature'} // '') . "', want '$want'"
            unless grep { $_ eq $want } @got;
    }
    return @p;
}

# The attempts of one event, signed each at its own time: an attempt's
# timestamps are not older than the arrival (whole seconds) of the attempt
# before it.  Returns the problems.
sub resign_problems {
    my (@reqs) = sort { $a->{arrived} <=> $b->{arrived} } @_;
    my @p;
    for my $i (1 .. $#reqs) {
        my $floor = int $reqs[$i - 1]{arrived};
        for my $hdr (qw(x-signature-timestamp webhook-timestamp)) {
            my $ts = $reqs[$i]{headers}{$hdr} // 0;
            push @p, "attempt $i: $hdr $ts is older than the attempt before "
                . "it ($reqs[$i - 1]{arrived})" if $ts < $floor;
        }
    }
    return @p;
}

# ---------------------------------------------------------------- API

# These take an MR::Test and an API key.

sub wh_create {
    my ($t, $key, $body) = @_;
    return $t->req(POST => '/v1/webhooks/endpoints',
        { Authorization => "Bearer $key" }, $body);
}

sub wh_get {
    my ($t, $key, $id) = @_;
    my $r = $t->req(GET => "/v1/webhooks/endpoints/$id",
        { Authorization => "Bearer $key" });
    return $r->{status} == 200 ? $r->{json} : undef;
}

# The deliveries of an endpoint, newest first (undef unless 200).
sub wh_deliveries {
    my ($t, $key, $ep, $limit) = @_;
    my $r = $t->req(GET => "/v1/webhooks/endpoints/$ep/deliveries?limit="
        . ($limit // 100), { Authorization => "Bearer $key" });
    return undef unless $r->{status} == 200 && ref $r->{json} eq 'HASH'
        && ref $r->{json}{data} eq 'ARRAY';
    return $r->{json}{data};
}

# One delivery of an endpoint by id.
sub wh_delivery {
    my ($t, $key, $ep, $id) = @_;
    my $l = wh_deliveries($t, $key, $ep) or return;
    my ($d) = grep { ref $_ eq 'HASH' && ($_->{id} // '') eq $id } @$l;
    return $d;
}

# The deliveries of an execution's events (undef unless 200).
sub wh_exec_deliveries {
    my ($t, $key, $exec) = @_;
    my $r = $t->req(GET => "/v1/webhooks/deliveries?execution_id=$exec",
        { Authorization => "Bearer $key" });
    return undef unless $r->{status} == 200 && ref $r->{json} eq 'HASH'
        && ref $r->{json}{data} eq 'ARRAY';
    return $r->{json}{data};
}

# A point after which nothing more is sent that was due before it: a
# webhook.test to an endpoint of its own ($rc's /_sync, on an account of
# its own) is delivered.  Claims take due deliveries in the order they are
# due, so a delivery that was due before the call and has not arrived when
# this returns true was not sent (it was parked, dropped or failed).  Use
# it instead of "nothing arrives within N seconds".  Needs
# modelroute_webhook_allow_private on.
sub wh_sync {
    my ($t, $rc, $timeout) = @_;
    my $s = $t->{wh_sync}{ $rc->port } //= do {
        my $acct = $t->new_account(credit => '1.00');
        my $r = wh_create($t, $acct->{key}, { url => $rc->url('/_sync') });
        croak "wh_sync: endpoint: $r->{status} $r->{body}"
            unless $r->{status} == 201;
        { key => $acct->{key}, id => $r->{json}{id} };
    };
    my $r = $t->req(POST => "/v1/webhooks/endpoints/$s->{id}/test",
        { Authorization => "Bearer $s->{key}" });
    croak "wh_sync: test event: $r->{status} $r->{body}"
        unless $r->{status} == 202;
    my $ev = $r->{json}{event_id};
    return scalar $rc->wait_requests(1, path => '/_sync',
        timeout => $timeout // 30,
        where => sub { ($_[0]{headers}{'webhook-id'} // '') eq $ev });
}

# Polls a delivery until $cond->($delivery) is true; returns it (or the
# last one seen, with {timed_out} set, at the deadline).
sub wait_delivery {
    my ($t, $key, $ep, $id, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // 15);
    my $last;
    while (1) {
        my $d = wh_delivery($t, $key, $ep, $id);
        $last = $d if $d;
        return $d if $d && $cond->($d);
        if (time > $deadline) {
            return { %{ $last // {} }, timed_out => 1 };
        }
        sleep 0.05;
    }
}

1;
