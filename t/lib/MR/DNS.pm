package MR::DNS;

# A fake DNS server for the tests: UDP on 127.0.0.1:<port>, run in a child
# process. It answers A and AAAA questions for the names registered with
# add() (NXDOMAIN for the others), and can delay or drop the answers of a
# name without holding up the others. Every question, answer and drop is
# logged with its time in a file the test reads.
#
#   my $dns = MR::DNS->new;              # picks a free port (port => 53)
#   $dns->add('hook.test', a => ['127.0.0.1'], aaaa => ['::1']);
#   $dns->add('slow.test', a => ['127.0.0.1'], delay => 5);
#   $dns->add('lost.test', drop => 1);   # never answered
#   $dns->add('bad.test', rcode => 2);   # SERVFAIL
#   $dns->start;
#   $dns->address                        # "127.0.0.1:<port>"
#   my @q = $dns->queries(name => 'slow.test');   # questions, in order
#   my @a = $dns->answers(name => 'slow.test');   # answers sent
#   $dns->wait_queries(1, name => 'slow.test', timeout => 10);
#   $dns->stop;
#
# Rules may change while it runs (each question reads them). Names are
# matched without case and without a trailing dot. A log record is
# { ev => 'query' | 'answer' | 'drop', name, type ('A', 'AAAA', or the
# number), id, at (epoch seconds), rcode and count (answers) }.

use strict;
use warnings;

use Carp qw(croak);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use Socket qw(AF_INET6 inet_aton inet_pton);
use Time::HiRes qw(time sleep);

my $JSON = JSON::PP->new->utf8->canonical;
my @LIVE;
my %TYPE = (1 => 'A', 28 => 'AAAA');

sub new {
    my ($class, %o) = @_;
    my $dir = tempdir('mr-dns-XXXXXX', TMPDIR => 1,
        CLEANUP => !$ENV{MR_KEEP});
    my $self = bless { dir => $dir, port => $o{port} // 0, owner => $$,
        rules => {} }, $class;
    $self->write_rules;
    return $self;
}

sub port    { $_[0]{port} }
sub address { "127.0.0.1:$_[0]{port}" }

# add($name, a => [...], aaaa => [...], ttl => 1, delay => s, drop => 1,
#     rcode => N): how questions about $name are answered from now on
#     (ttl in seconds, 1 by default). add($name) with nothing else makes
#     the name unknown again (NXDOMAIN).
sub add {
    my ($self, $name, %rule) = @_;
    $name = lc $name;
    $name =~ s/\.$//;
    if (%rule) {
        $self->{rules}{$name} = \%rule;
    } else {
        delete $self->{rules}{$name};
    }
    $self->write_rules;
    return $self;
}

sub write_rules {
    my ($self) = @_;
    my $f = "$self->{dir}/rules.json";
    open my $fh, '>', "$f.tmp" or croak "$f.tmp: $!";
    print $fh $JSON->encode($self->{rules});
    close $fh;
    rename "$f.tmp", $f or croak "rename $f: $!";
}

sub start {
    my ($self) = @_;
    croak 'dns server already running' if $self->{pid};
    my $sock;
    for (1 .. 50) {
        $sock = IO::Socket::INET->new(Proto => 'udp',
            LocalAddr => '127.0.0.1', LocalPort => $self->{port}) and last;
        sleep 0.1;
    }
    croak "dns server: cannot bind udp port $self->{port}: $!" unless $sock;
    $self->{port} = $sock->sockport;
    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        my $ok = eval { $self->serve($sock); 1 };
        print STDERR "dns server: $@" unless $ok;
        POSIX::_exit($ok ? 0 : 1);
    }
    close $sock;
    $self->{pid} = $pid;
    push @LIVE, $self unless grep { $_ == $self } @LIVE;
    return $self;
}

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
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

sub DESTROY {
    my ($self) = @_;
    $self->stop if $self->{owner} == $$;
}

END {
    for my $d (@LIVE) {
        $d->stop if $d->{owner} == $$;
    }
}

# ---------------------------------------------------------------- server

sub serve {
    my ($self, $sock) = @_;
    @LIVE = ();
    $self->{owner} = -1;
    $SIG{$_} = 'DEFAULT' for qw(INT PIPE);
    my $quit = 0;
    $SIG{TERM} = sub { $quit = 1 };
    open my $log, '>>', "$self->{dir}/log" or die "log: $!\n";
    $log->autoflush(1);
    my @later;    # [due, peer, packet, record]

    until ($quit) {
        my $wait = 1;
        if (@later) {
            $wait = $later[0][0] - time;
            $wait = 0 if $wait < 0;
        }
        my $rin = '';
        vec($rin, fileno($sock), 1) = 1;
        my $n = select(my $rout = $rin, undef, undef, $wait);
        last if $quit;
        if ($n > 0) {
            my $peer = recv($sock, my $pkt, 4096, 0);
            if (defined $peer) {
                my $q = parse_query($pkt);
                if ($q) {
                    my $rule = $self->rule_for($q->{name});
                    my $rec = { name => $q->{name}, id => $q->{id},
                        type => $TYPE{ $q->{qtype} } // $q->{qtype} };
                    print $log $JSON->encode({ %$rec, ev => 'query',
                        at => time }), "\n";
                    if ($rule && $rule->{drop}) {
                        print $log $JSON->encode({ %$rec, ev => 'drop',
                            at => time }), "\n";
                    } else {
                        my ($out, $rcode, $count) = answer($q, $rule);
                        $rec->{rcode} = $rcode;
                        $rec->{count} = $count;
                        push @later, [ time + ($rule ? $rule->{delay} // 0
                            : 0), $peer, $out, $rec ];
                        @later = sort { $a->[0] <=> $b->[0] } @later;
                    }
                }
            }
        }
        while (@later && $later[0][0] <= time) {
            my ($due, $peer, $out, $rec) = @{ shift @later };
            send($sock, $out, 0, $peer);
            print $log $JSON->encode({ %$rec, ev => 'answer', at => time }),
                "\n";
        }
    }
    close $sock;
}

sub rule_for {
    my ($self, $name) = @_;
    my $rules = {};
    if (open my $fh, '<', "$self->{dir}/rules.json") {
        local $/;
        $rules = eval { $JSON->decode(<$fh>) } // {};
    }
    return $rules->{$name};
}

# The question of a query: {id, flags, name, qtype, qclass, question}.
sub parse_query {
    my ($pkt) = @_;
    return if length $pkt < 17;
    my ($id, $flags, $qd) = unpack 'n n n', $pkt;
    return if $flags & 0x8000 || $qd != 1;
    my ($off, @labels) = (12);
    while (1) {
        return if $off >= length $pkt;
        my $len = ord substr($pkt, $off++, 1);
        last if $len == 0;
        return if $len > 63 || $off + $len > length $pkt;
        push @labels, substr($pkt, $off, $len);
        $off += $len;
    }
    return if $off + 4 > length $pkt;
    my ($qtype, $qclass) = unpack 'n n', substr($pkt, $off, 4);
    return { id => $id, flags => $flags, name => lc join('.', @labels),
        qtype => $qtype, qclass => $qclass,
        question => substr($pkt, 12, $off + 4 - 12) };
}

# The answer to a question: (bytes, rcode, number of records).
sub answer {
    my ($q, $rule) = @_;
    my ($rcode, @rr) = (0);
    if (!$rule) {
        $rcode = 3;
    } elsif (defined $rule->{rcode}) {
        $rcode = $rule->{rcode};
    } else {
        my $ttl = $rule->{ttl} // 1;
        if ($q->{qtype} == 1) {
            push @rr, map { pack('n n n N n', 0xc00c, 1, 1, $ttl, 4)
                . inet_aton($_) } @{ $rule->{a} // [] };
        } elsif ($q->{qtype} == 28) {
            push @rr, map { pack('n n n N n', 0xc00c, 28, 1, $ttl, 16)
                . inet_pton(AF_INET6, $_) } @{ $rule->{aaaa} // [] };
        }
    }
    my $flags = 0x8000 | 0x0400 | ($q->{flags} & 0x0100) | 0x0080 | $rcode;
    return (pack('n n n n n n', $q->{id}, $flags, 1, scalar @rr, 0, 0)
        . $q->{question} . join('', @rr), $rcode, scalar @rr);
}

# ---------------------------------------------------------------- records

# Log records (ev => 'query' | 'answer' | 'drop', name => ...), in order.
sub records {
    my ($self, %f) = @_;
    open my $fh, '<', "$self->{dir}/log" or return;
    my @r;
    while (my $l = <$fh>) {
        last unless $l =~ /\n\z/;    # a line being written
        my $r = eval { $JSON->decode($l) } or next;
        next if defined $f{ev} && $r->{ev} ne $f{ev};
        next if defined $f{name} && $r->{name} ne lc $f{name};
        next if defined $f{type} && $r->{type} ne $f{type};
        push @r, $r;
    }
    return @r;
}

sub queries { my ($self, %f) = @_; $self->records(%f, ev => 'query') }
sub answers { my ($self, %f) = @_; $self->records(%f, ev => 'answer') }

# Waits until at least $n questions (name => ..., type => ...) arrived;
# returns them, or () at the deadline.
sub wait_queries {
    my ($self, $n, %f) = @_;
    my $deadline = time + (delete $f{timeout} // 10);
    while (1) {
        my @q = $self->queries(%f);
        return @q if @q >= $n;
        return () if time > $deadline;
        sleep 0.02;
    }
}

sub clear {
    my ($self) = @_;
    truncate "$self->{dir}/log", 0;
}

1;
